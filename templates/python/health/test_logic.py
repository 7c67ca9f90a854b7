import unittest

import logic


class Address(unittest.TestCase):
    def test_the_revision_url_comes_first_and_ports_default_by_scheme(self):
        endpoints = [("service", "https://api.example.com"), ("revision", "http://127.0.0.1:8081/")]
        self.assertEqual(logic.address(endpoints), ("127.0.0.1", 8081))
        self.assertEqual(logic.address([("service", "https://api.example.com")]), ("api.example.com", 443))

    def test_no_url_is_an_error(self):
        with self.assertRaises(ValueError):
            logic.address([])

    def test_only_a_connection_is_healthy(self):
        self.assertEqual(logic.verdict(True), "healthy")
        self.assertEqual(logic.verdict(False), "unhealthy")


if __name__ == "__main__":
    unittest.main()
