"""The two hash-locked sets: runtime (`make run`, `pip install .`) and development."""

from __future__ import annotations

import importlib.metadata
import os
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")
_HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")


def read_lock(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) of one lock file."""
    pins: dict[str, tuple[str, set[str]]] = {}
    current = None
    with open(os.path.join(ROOT, name)) as file:
        for line in file:
            pinned = _PIN.match(line)
            if pinned:
                current = canonicalize_name(pinned.group(1))
                pins[current] = (pinned.group(2), set())
            elif line.strip() and not line.lstrip().startswith(("#", "--hash")):
                raise AssertionError(f"{name}: not a pin: {line!r}")
            if current is not None:
                pins[current][1].update(_HASH.findall(line))
    return {
        name: (version, frozenset(hashes)) for name, (version, hashes) in pins.items()
    }


def read_in(name: str) -> list[Requirement]:
    with open(os.path.join(ROOT, name)) as file:
        lines = [line.split("#")[0].strip() for line in file]
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


class LockTests(unittest.TestCase):
    def setUp(self) -> None:
        self.runtime = read_lock("requirements.lock")
        self.dev = read_lock("requirements-dev.lock")

    def test_every_pin_has_hashes(self) -> None:
        for pins in (self.runtime, self.dev):
            for name, (_, hashes) in pins.items():
                self.assertTrue(hashes, name)

    def test_shared_packages_have_one_version_and_the_same_hashes(self) -> None:
        shared = set(self.runtime) & set(self.dev)
        self.assertIn("grpcio", shared)
        for name in shared:
            self.assertEqual(self.runtime[name], self.dev[name], name)

    def test_runtime_holds_no_development_tool(self) -> None:
        for tool in read_in("requirements-dev.in"):
            self.assertNotIn(canonicalize_name(tool.name), self.runtime)
        for name in ("mypy", "ruff", "virtme-ng", "hypothesis", "grpcio-tools"):
            self.assertNotIn(name, self.runtime)

    def test_runtime_lock_is_closed_under_dependencies(self) -> None:
        # What `pip install --no-deps -r requirements.lock` leaves out is missing
        # at run time: follow every runtime requirement through its metadata.
        pending = [(r, frozenset(r.extras)) for r in read_in("requirements.in")]
        pending += [
            (Requirement(text), frozenset())
            for text in importlib.metadata.requires("jobworker") or ()
        ]
        seen: set[tuple[str, frozenset[str]]] = set()
        while pending:
            requirement, extras = pending.pop()
            name = canonicalize_name(requirement.name)
            self.assertIn(name, self.runtime, f"{requirement} is not locked")
            if (name, extras) in seen:
                continue
            seen.add((name, extras))
            version = self.runtime[name][0]
            self.assertEqual(importlib.metadata.version(name), version, name)
            for text in importlib.metadata.requires(name) or ():
                needed = Requirement(text)
                environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
                if needed.marker is None or any(
                    needed.marker.evaluate(env) for env in environments
                ):
                    pending.append((needed, frozenset(needed.extras)))

    def test_pip_install_needs_only_what_requirements_in_lists(self) -> None:
        installed = {
            canonicalize_name(Requirement(text).name)
            for text in importlib.metadata.requires("jobworker") or ()
        }
        listed = {canonicalize_name(r.name) for r in read_in("requirements.in")}
        self.assertEqual(installed, listed - {"setuptools"})
