import tempfile
import unittest

import logic


class PlatformRecords(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.platform = logic.Platform(self.dir.name)

    def tearDown(self):
        self.dir.cleanup()

    def test_a_repeated_deploy_finds_its_revision(self):
        first = self.platform.deploy("api", "r1", {"artifact": "api:1"})
        again = self.platform.deploy("api", "r1", {"artifact": "api:1"})
        self.assertEqual(first, again)
        self.assertEqual(len(self.platform.load("api")["revisions"]), 1)

    def test_deployed_is_what_the_serving_revision_runs(self):
        self.platform.deploy("api", "r1", {"artifact": "api:1"})
        self.platform.deploy("api", "r2", {"artifact": "api:2"})
        self.platform.set_traffic("api", [("api-r1", 100), ("api-r2", 0)])
        self.assertEqual(logic.deployed(self.platform.load("api")), {"artifact": "api:1"})

    def test_traffic_for_an_unknown_revision_and_retiring_a_serving_one_are_refused(self):
        self.platform.deploy("api", "r1", {})
        with self.assertRaises(logic.NotFound):
            self.platform.set_traffic("api", [("nope", 100)])
        self.platform.set_traffic("api", [("api-r1", 100)])
        with self.assertRaises(logic.Conflict):
            self.platform.retire("api", "api-r1")

    def test_removing_nothing_succeeds(self):
        self.platform.remove("api")
        self.platform.retire("api", "api-r1")
        self.assertIsNone(self.platform.load("api"))


if __name__ == "__main__":
    unittest.main()
