"""Tests for jobworker.limits (the table of limits) and jobworker.defaults."""

from __future__ import annotations

from dataclasses import fields

from twisted.trial import unittest

from jobworker import defaults
from jobworker.cli.parser import build_parser
from jobworker.limits import (
    LIMITS,
    limits_for_log,
    limits_from_pb,
    limits_text,
    limits_to_pb,
)
from jobworker.model import Limits
from jobworker.server.tap import Options
from jobworker.units import InvalidNumber
from jobworker.v1 import jobworker_pb2 as pb

TLS = ["--tls-cert", "c.pem", "--tls-key", "c.key", "--client-ca", "ca.pem"]
# Values of each limit that its format writes exactly.
SAMPLES: dict[str, list[float | int]] = {
    "cpu": [0.001, 0.5, 1.0, 2.25, 64.0],
    "memory_bytes": [1, 1000, 1 << 20, 512 << 20, 3 << 29, 1 << 40],
    "io_read_bps": [1, 1023, 1 << 10, 10 << 20],
    "io_write_bps": [7, 5 << 20, 3 << 30],
    "pids": [1, 64, 1024, 32768],
}


class TableTests(unittest.TestCase):
    def test_every_limits_field_has_exactly_one_row_in_field_order(self) -> None:
        self.assertEqual(
            [limit.name for limit in LIMITS], [field.name for field in fields(Limits)]
        )
        self.assertEqual(set(SAMPLES), {limit.name for limit in LIMITS})

    def test_flags_and_labels_are_unique(self) -> None:
        for column in ("flag", "label"):
            values = [getattr(limit, column) for limit in LIMITS]
            self.assertEqual(len(values), len(set(values)), column)

    def test_every_row_is_a_field_of_the_protobuf_message(self) -> None:
        message_fields = set(pb.Limits.DESCRIPTOR.fields_by_name)
        self.assertEqual({limit.name for limit in LIMITS}, message_fields)

    def test_format_then_parse_gives_the_value_back(self) -> None:
        for limit in LIMITS:
            for value in SAMPLES[limit.name]:
                text = limit.format(value)
                self.assertEqual(limit.parse(text), value, (limit.name, text))

    def test_parse_takes_the_example_of_the_help(self) -> None:
        for limit in LIMITS:
            self.assertGreater(limit.parse(limit.example), 0, limit.name)

    def test_parse_refuses_garbage_zero_and_negative(self) -> None:
        for limit in LIMITS:
            for text in ("lots", "", "0", "-1", "inf", "nan"):
                self.assertRaises(InvalidNumber, limit.parse, text)

    def test_sizes_take_suffixes_and_counts_are_whole(self) -> None:
        by_name = {limit.name: limit for limit in LIMITS}
        self.assertEqual(by_name["memory_bytes"].parse("1.5G"), 3 << 29)
        self.assertEqual(by_name["io_read_bps"].format(10 << 20), "10M")
        self.assertRaises(InvalidNumber, by_name["pids"].parse, "1.5")
        self.assertEqual(by_name["cpu"].format(1.0), "1")


class TextTests(unittest.TestCase):
    def test_limits_text_shows_every_limit_for_people(self) -> None:
        limits = Limits(cpu=1.0, memory_bytes=512 << 20, io_write_bps=10 << 20)
        self.assertEqual(
            limits_text(limits),
            "cpu 1, memory 512M, io-read unlimited, io-write 10M/s, pids unlimited",
        )

    def test_limits_for_log_shows_only_the_limits_set(self) -> None:
        self.assertEqual(limits_for_log(Limits(io_read_bps=1 << 30)), "io_read_bps=1G")


class MessageTests(unittest.TestCase):
    def test_protobuf_round_trip_keeps_unset_fields_unset(self) -> None:
        for limits in (
            Limits(),
            Limits(cpu=0.25, pids=7),
            Limits(
                cpu=2.0, memory_bytes=1 << 30, io_read_bps=1, io_write_bps=2, pids=3
            ),
        ):
            message = limits_to_pb(limits)
            for limit in LIMITS:
                is_set = getattr(limits, limit.name) is not None
                self.assertEqual(message.HasField(limit.name), is_set)  # type: ignore[arg-type]
            self.assertEqual(limits_from_pb(message), limits)


class OptionsTests(unittest.TestCase):
    def test_every_limit_is_a_cli_option(self) -> None:
        parser = build_parser()
        for limit in LIMITS:
            args = parser.parse_args(
                ["start", f"--{limit.flag}", limit.example, "--", "true"]
            )
            self.assertEqual(getattr(args, limit.name), limit.parse(limit.example))

    def test_every_limit_has_a_server_default_and_maximum(self) -> None:
        for limit in LIMITS:
            value = limit.example
            options = Options()
            options.parseOptions(
                [*TLS, f"--default-{limit.flag}", value, f"--max-{limit.flag}", value]
            )
            policy = options["policy"]
            self.assertEqual(getattr(policy.defaults, limit.name), limit.parse(value))
            self.assertEqual(getattr(policy.maximums, limit.name), limit.parse(value))


class DefaultsTests(unittest.TestCase):
    def test_a_start_call_outwaits_the_exec_timeout(self) -> None:
        self.assertGreater(defaults.START_CALL_TIMEOUT, defaults.EXEC_TIMEOUT)

    def test_default_limits_are_within_the_default_maximums(self) -> None:
        maximums = defaults.max_limits()
        for limit in LIMITS:
            default = getattr(defaults.DEFAULT_LIMITS, limit.name)
            maximum = getattr(maximums, limit.name)
            if maximum is not None:
                self.assertIsNotNone(default, limit.name)
                self.assertLessEqual(default, maximum, limit.name)
