"""Signing and error parsing, without a center: the known answers of shared/src/sign.rs."""

import unittest

from elves_client import (
    AgentNotFound,
    AuthError,
    BadRequest,
    ElvesError,
    QueueStateError,
    compute,
    error_for,
    sign_params,
    sign_string,
)

PATH = "/api/v2/rt/exec"
PARAMS = [
    ("timestamp", "1700000000"),
    ("app", "apptest"),
    ("auth_id", "admin"),
    ("sign_type", "MD5"),
    ("sign", "ignored"),
    ("param", '{"my":"a b"}'),
    ("ip", "127.0.0.1"),
    ("func", "helloword"),
    ("proxy", ""),
]


class SigningTest(unittest.TestCase):
    def test_sign_string_sorts_and_skips_sign_fields(self):
        self.assertEqual(
            sign_string(PATH, PARAMS),
            '/api/v2/rt/exec?app=apptest&auth_id=admin&func=helloword&ip=127.0.0.1'
            '&param={"my":"a b"}&proxy=&timestamp=1700000000',
        )

    def test_equal_keys_sort_by_value_in_byte_order(self):
        self.assertEqual(sign_string("/p", [("k", "b"), ("k", "a")]), "/p?k=a&k=b")
        # "Z" (0x5a) sorts before "a" (0x61), and "é" (0xc3 0xa9) after both.
        self.assertEqual(sign_string("/p", [("é", "1"), ("a", "1"), ("Z", "1")]),
                         "/p?Z=1&a=1&é=1")

    def test_known_answers(self):
        text = sign_string(PATH, PARAMS)
        self.assertEqual(compute("MD5", text, "secret"), "5048781daeb166dc814e81ea47d5fcb8")
        self.assertEqual(
            compute("hmac-sha256", text, "secret"),
            "3f9afcde574b5d1a6912fcb38b9958b11a9507a3b87c40c759b7987290719514",
        )

    def test_sign_params_replaces_given_sign_fields(self):
        signed = sign_params(PATH, PARAMS, "md5", "secret")
        self.assertEqual(signed[-2:], [("sign_type", "MD5"),
                                       ("sign", "5048781daeb166dc814e81ea47d5fcb8")])
        self.assertEqual([k for k, _ in signed].count("sign"), 1)

    def test_unknown_sign_type_is_refused(self):
        with self.assertRaises(ValueError):
            compute("sha1", "x", "k")


class ErrorTest(unittest.TestCase):
    def test_codes_pick_their_class_and_keep_the_code(self):
        cases = [
            ("[414.1]unknown agent 10.0.0.7", AgentNotFound, "414.1", "unknown agent 10.0.0.7"),
            ("[401.5]sign does not match", AuthError, "401.5", "sign does not match"),
            ("[403.10]bad target", BadRequest, "403.10", "bad target"),
            ("[412.2]queue is stoped", QueueStateError, "412.2", "queue is stoped"),
            ("[499.9]new code", ElvesError, "499.9", "new code"),
        ]
        for text, cls, code, message in cases:
            err = error_for(text, "x/y")
            self.assertIs(type(err), cls, text)
            self.assertEqual((err.code, err.message), (code, message))
            self.assertIn("[%s]" % code, str(err))

    def test_text_without_a_code_is_still_an_error(self):
        err = error_for("something odd")
        self.assertIsInstance(err, ElvesError)
        self.assertEqual(err.code, "")


if __name__ == "__main__":
    unittest.main()
