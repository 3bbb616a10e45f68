"""The journal on its own: the record format, crash-safe writes, bad records."""

from __future__ import annotations

import json
import os
import uuid
from typing import cast

from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial import unittest

from jobworker.job.journal import RECORD, TEMP, Entry, Journal, decode, encode
from jobworker.model import JobState, JobStatus, Limits, Usage


def status_of(**fields: object) -> JobStatus:
    values: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "owner": "alice",
        "command": (b"sh", b"-c", b"echo \xff\x80 caf\xc3\xa9"),
        "state": JobState.RUNNING,
        "limits": Limits(cpu=0.5, memory_bytes=64 << 20, pids=10),
        "started_at": 1700000000.25,
    }
    values.update(fields)
    return JobStatus(**values)  # type: ignore[arg-type]


class RecordFormatTests(unittest.TestCase):
    def test_a_record_gives_back_the_exact_status(self) -> None:
        status = status_of(
            state=JobState.KILLED,
            ended_at=1700000009.5,
            signal=15,
            oom_killed=True,
            stop_requested=True,
            output_bytes=10,
            output_truncated=True,
            output_truncated_by="user-output-quota",
            usage=Usage(cpu_seconds=1.25, memory_peak_bytes=1 << 20, pids_peak=3),
            request_id="retry-1",
        )
        self.assertEqual(decode(encode(Entry(status, 15))), Entry(status, 15))

    def test_a_record_without_the_truncation_cause_is_read(self) -> None:
        # Written before the cause was journaled: truncated, cause not known.
        status = status_of(output_truncated=True, output_truncated_by="output-cap")
        older = json.loads(encode(Entry(status, 0)))
        del older["output_truncated_by"]
        entry = decode(json.dumps(older).encode())
        self.assertTrue(entry.status.output_truncated)
        self.assertEqual(entry.status.output_truncated_by, "")
        value = json.dumps({**older, "output_truncated_by": 7}).encode()
        self.assertIn(
            "'output_truncated_by'", str(self.assertRaises(ValueError, decode, value))
        )

    def test_a_record_is_ascii_json(self) -> None:
        data = encode(Entry(status_of(), 0))
        data.decode("ascii")
        self.assertEqual(json.loads(data)["format"], 1)

    def test_damaged_records_say_what_is_wrong(self) -> None:
        good = json.loads(encode(Entry(status_of(), 0)))
        cases = {
            b"": "not JSON",
            encode(Entry(status_of(), 0))[:-7]: "not JSON",
            b"[1, 2]": "not a JSON object",
            json.dumps({**good, "format": 2}).encode(): "format 2",
            json.dumps({**good, "exit_code": True}).encode(): "'exit_code'",
            json.dumps({**good, "state": "sleeping"}).encode(): "sleeping",
            json.dumps({**good, "command": []}).encode(): "'command'",
            json.dumps({**good, "log_size": -1}).encode(): "negative",
            json.dumps({k: v for k, v in good.items() if k != "owner"}).encode(): (
                "no 'owner'"
            ),
        }
        for data, why in cases.items():
            error = self.assertRaises(ValueError, decode, data)
            self.assertIn(why, str(error), data)


class JournalTests(unittest.TestCase):
    def setUp(self) -> None:
        self.state_dir = self.mktemp()
        self.journal = Journal(self.state_dir)
        self.warnings: list[str] = []

        def observe(event: LogEvent) -> None:
            self.warnings.append(formatEvent(event))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def job_dir(self, job_id: str) -> str:
        path = os.path.join(self.state_dir, "jobs", job_id)
        os.makedirs(path, exist_ok=True)
        return path

    def record_inode(self, job_id: str) -> int:
        return os.stat(os.path.join(self.job_dir(job_id), RECORD)).st_ino

    def test_saved_records_are_loaded_oldest_first(self) -> None:
        older = status_of(started_at=1.0)
        newer = status_of(started_at=2.0, state=JobState.EXITED, exit_code=0)
        for status in (newer, older):
            self.job_dir(status.id)
            self.journal.save(status, 7)
        loaded = Journal(self.state_dir).load()
        self.assertEqual(loaded.entries, [Entry(older, 7), Entry(newer, 7)])
        self.assertEqual(loaded.unrecorded, [])

    def test_output_growth_of_a_running_job_is_not_rewritten(self) -> None:
        status = status_of()
        self.job_dir(status.id)
        self.journal.save(status, 0)
        first = self.record_inode(status.id)
        self.journal.save(status_of(id=status.id, output_bytes=5), 10)
        self.assertEqual(self.record_inode(status.id), first)
        stopping = status_of(id=status.id, state=JobState.STOPPING, stop_requested=True)
        self.journal.save(stopping, 10)
        self.assertNotEqual(self.record_inode(status.id), first)
        self.assertEqual(Journal(self.state_dir).load().entries[0].status, stopping)

    def test_a_write_cut_off_leaves_the_old_record(self) -> None:
        status = status_of()
        job_dir = self.job_dir(status.id)
        self.journal.save(status, 0)
        with open(os.path.join(job_dir, TEMP), "wb") as torn:
            torn.write(b'{"format": 1, "id": "')
        loaded = Journal(self.state_dir).load()
        self.assertEqual(loaded.entries, [Entry(status, 0)])
        self.assertFalse(os.path.exists(os.path.join(job_dir, TEMP)))

    def test_damaged_records_are_logged_and_skipped(self) -> None:
        good = status_of()
        self.job_dir(good.id)
        self.journal.save(good, 0)
        other = status_of()
        damaged = {
            str(uuid.uuid4()): b'{"format": 1, "id": ',
            str(uuid.uuid4()): encode(Entry(other, 0)),  # another job's record
            str(uuid.uuid4()): b"\xff\xfe not even text",
        }
        for job_id, data in damaged.items():
            with open(os.path.join(self.job_dir(job_id), RECORD), "wb") as record:
                record.write(data)
        loaded = Journal(self.state_dir).load()
        self.assertEqual(loaded.entries, [Entry(good, 0)])
        self.assertEqual(loaded.unrecorded, [])
        for job_id in damaged:
            said = [text for text in self.warnings if job_id in text]
            self.assertEqual(len(said), 1, self.warnings)
            self.assertIn("skipped", said[0])

    def test_directories_without_a_record_are_reported(self) -> None:
        job_id = str(uuid.uuid4())
        self.job_dir(job_id)
        self.assertEqual(Journal(self.state_dir).load().unrecorded, [job_id])

    def test_a_missing_jobs_directory_is_an_empty_journal(self) -> None:
        loaded = self.journal.load()
        self.assertEqual((loaded.entries, loaded.unrecorded), ([], []))

    def test_removed_records_are_not_loaded_again(self) -> None:
        status = status_of()
        self.job_dir(status.id)
        self.journal.save(status, 0)
        self.journal.remove(status.id)
        self.assertEqual(Journal(self.state_dir).load().entries, [])
        self.journal.save(status, 0)  # saved anew: it was forgotten
        self.assertEqual(len(Journal(self.state_dir).load().entries), 1)

    def test_a_failed_write_is_logged_and_does_not_raise(self) -> None:
        status = status_of()  # its job directory does not exist
        self.journal.save(status, 0)
        self.assertTrue(
            any("cannot write its journal record" in text for text in self.warnings)
        )
        self.assertEqual(self.journal.load().entries, [])
