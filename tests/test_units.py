"""Tests for jobworker.units (sizes, durations) and jobworker.address (HOST:PORT)."""

from __future__ import annotations

import errno
import socket

from twisted.trial import unittest

from jobworker.address import (
    InvalidAddress,
    bind_error,
    format_address,
    parse_address,
)
from jobworker.units import (
    InvalidDuration,
    InvalidSize,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    round_size,
)


class ParseSizeTests(unittest.TestCase):
    def test_plain_number_is_bytes(self) -> None:
        self.assertEqual(parse_size("1048576"), 1 << 20)

    def test_suffixes_are_base_1024_in_either_case(self) -> None:
        self.assertEqual(parse_size("1K"), 1024)
        self.assertEqual(parse_size("512m"), 512 << 20)
        self.assertEqual(parse_size("4G"), 4 << 30)
        self.assertEqual(parse_size("2T"), 2 << 40)

    def test_binary_and_byte_spellings_mean_the_same(self) -> None:
        self.assertEqual(parse_size("256MiB"), 256 << 20)
        self.assertEqual(parse_size("256MB"), 256 << 20)

    def test_fraction_with_suffix_is_allowed_when_whole_bytes(self) -> None:
        self.assertEqual(parse_size("1.5G"), 3 << 29)

    def test_fraction_of_a_byte_is_refused(self) -> None:
        self.assertRaises(InvalidSize, parse_size, "1.5")

    def test_garbage_is_refused_with_an_example(self) -> None:
        for text in ("", "M", "-1M", "12Q", "1 2", "0x10"):
            error = self.assertRaises(InvalidSize, parse_size, text)
            self.assertIn("512M", str(error))

    def test_format_is_exact_when_it_can_be(self) -> None:
        self.assertEqual(format_size(512 << 20), "512M")
        self.assertEqual(format_size(3 << 29), "1536M")
        self.assertEqual(format_size(1000), "1000")
        self.assertEqual(format_size(1500), "1.5K")

    def test_measured_sizes_are_rounded_to_their_largest_unit(self) -> None:
        self.assertEqual(round_size(18512 << 10), "18.1M")
        self.assertEqual(round_size(1536 << 20), "1.5G")
        self.assertEqual(round_size(4096), "4.0K")
        self.assertEqual(round_size(0), "0")

    def test_format_round_trips_through_parse(self) -> None:
        for size in (1, 1024, 4 << 30, 7 << 20):
            self.assertEqual(parse_size(format_size(size)), size)


class DurationTests(unittest.TestCase):
    def test_units_add_up(self) -> None:
        cases = {"90s": 90, "5m": 300, "1h30m": 5400, "7d": 604800, "250ms": 0.25}
        for text, seconds in cases.items():
            self.assertEqual(parse_duration(text), seconds)

    def test_garbage_is_refused_with_an_example(self) -> None:
        for text in ("", "7", "a week", "5 m", "-1d", "1w"):
            error = self.assertRaises(InvalidDuration, parse_duration, text)
            self.assertIn("e.g. 90s", str(error))

    def test_format_is_the_largest_exact_unit_and_round_trips(self) -> None:
        cases = {604800.0: "7d", 43200.0: "12h", 5400.0: "90m", 1.5: "1.5s"}
        for seconds, text in cases.items():
            self.assertEqual(format_duration(seconds), text)
            self.assertEqual(parse_duration(text), seconds)


class AddressTests(unittest.TestCase):
    def test_host_and_port(self) -> None:
        self.assertEqual(parse_address("127.0.0.1:7443"), ("127.0.0.1", 7443))
        self.assertEqual(parse_address("localhost:1"), ("localhost", 1))

    def test_ipv6_in_brackets(self) -> None:
        self.assertEqual(parse_address("[::1]:7443"), ("::1", 7443))

    def test_port_zero_only_when_allowed(self) -> None:
        self.assertRaises(InvalidAddress, parse_address, "127.0.0.1:0")
        self.assertEqual(
            parse_address("127.0.0.1:0", allow_port_zero=True), ("127.0.0.1", 0)
        )

    def test_malformed_addresses_are_refused(self) -> None:
        for text in ("127.0.0.1", ":7443", "::1:7443", "host:65536", "host:x", ""):
            self.assertRaises(InvalidAddress, parse_address, text)

    def test_format_brackets_ipv6(self) -> None:
        self.assertEqual(format_address("::1", 7443), "[::1]:7443")
        self.assertEqual(format_address("127.0.0.1", 7443), "127.0.0.1:7443")


class BindErrorTests(unittest.TestCase):
    def test_a_listening_port_is_in_use(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            failure = bind_error(f"127.0.0.1:{port}")
        self.assertEqual(getattr(failure, "errno", None), errno.EADDRINUSE)

    def test_connections_left_by_a_killed_server_do_not_hold_its_port(self) -> None:
        # A server that dies closes its connections first: they stay in
        # TIME_WAIT on its port, which grpcio (SO_REUSEADDR) can bind again.
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        listener.close()
        accepted.close()  # the server's side closes first: its TIME_WAIT
        client.recv(1)
        client.close()
        self.assertIsNone(bind_error(f"127.0.0.1:{port}"))
