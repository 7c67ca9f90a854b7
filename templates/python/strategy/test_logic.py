import unittest

import logic


class Stages(unittest.TestCase):
    def test_a_rollout_with_a_stable_revision_splits_analyses_promotes_and_retires(self):
        stages, state = [], None
        while state != "done":
            state = logic.next_stage(state, has_stable=True, splits=True)
            stages.append(state)
        self.assertEqual(stages, ["split", "analyse", "promote", "retire", "done"])

    def test_a_first_release_has_nothing_to_split_with(self):
        self.assertEqual(logic.next_stage(None, has_stable=False, splits=True), "analyse")

    def test_percent_is_checked(self):
        self.assertEqual(logic.parse(""), 10)
        self.assertEqual(logic.parse('{"percent": 25}'), 25)
        with self.assertRaises(ValueError):
            logic.parse('{"percent": 100}')
        with self.assertRaises(ValueError):
            logic.parse('{"steps": [1]}')


if __name__ == "__main__":
    unittest.main()
