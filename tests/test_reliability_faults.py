"""`jrt score` under filesystem faults, lock contention between real processes, and SIGTERM."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import pytest
from tiny_models import write_tiny_mamba
from typer.testing import CliRunner

from jrt_prompt import load_model, scoring
from jrt_prompt.errors import JRTError
from jrt_prompt.scoring import score_file


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_mamba(tmp_path_factory.mktemp("models") / "tiny-mamba")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(tiny_dir, device="cpu")


def write_input(path, n):
    """Rows whose contexts grow with the line number (so they finish in reverse input order)."""
    path.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "context": f"Item {i}: {i * 7}. " * (1 + i), "question": f"Item {i}?"})
            + "\n"
            for i in range(n)
        )
    )
    return path


def complete_rows(path):
    data = Path(path).read_bytes()
    assert not data or data.endswith(b"\n"), "a torn line was left behind"
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith((".tmp", ".lock")))


def one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message and len(message) < 400
    return message


# --- the output path -----------------------------------------------------------------------------


def test_out_naming_a_directory_is_a_one_line_error(tmp_path, tiny):
    src = write_input(tmp_path / "in.jsonl", 2)
    (tmp_path / "preds").mkdir()
    with pytest.raises(JRTError) as info:
        score_file(src, tmp_path / "preds", model=tiny, max_new_tokens=1)
    assert "is a directory" in one_line(info) and "preds.jsonl" in str(info.value)
    assert list((tmp_path / "preds").iterdir()) == []


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs Linux's /sys")
def test_a_read_only_directory_is_a_one_line_error(tmp_path, tiny):
    # /sys refuses new files even to root: a real read-only directory
    if _sys_is_writable():
        pytest.skip("/sys accepts new files here")
    src = write_input(tmp_path / "in.jsonl", 2)
    with pytest.raises(JRTError) as info:
        score_file(src, Path("/sys/preds.jsonl"), model=tiny, max_new_tokens=1)
    message = one_line(info)
    assert "/sys/preds.jsonl" in message and "directory you can write to" in message


def _sys_is_writable():
    try:
        fd = os.open("/sys/.jrt-probe", os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink("/sys/.jrt-probe")
    return True


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_a_directory_without_write_permission_is_a_one_line_error(tmp_path, tiny):
    src = write_input(tmp_path / "in.jsonl", 2)
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(JRTError) as info:
            score_file(src, locked / "out.jsonl", model=tiny, max_new_tokens=1)
        assert "directory you can write to" in one_line(info)
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_a_read_only_filesystem_keeps_the_existing_output(tmp_path, tiny, monkeypatch):
    src = write_input(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    score_file(src, out, model=tiny, max_new_tokens=1, limit=2)
    before = out.read_bytes()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):  # the filesystem was remounted read-only
        if str(path).startswith(str(tmp_path)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(JRTError) as info:
        score_file(src, out, model=tiny, max_new_tokens=1)
    monkeypatch.undo()
    assert "Read-only file system" in one_line(info) and "out.jsonl" in str(info.value)
    assert out.read_bytes() == before and leftovers(tmp_path) == []


# --- a full disk ---------------------------------------------------------------------------------


class _FillingFile:
    """A file whose disk fills up: the n-th write stores half its bytes, then fails with ENOSPC."""

    def __init__(self, real, state):
        self.real, self.state = real, state

    def write(self, data):
        self.state["writes"] += 1
        if self.state["writes"] >= self.state["fail_at"]:
            self.real.write(data[: len(data) // 2])
            self.real.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def _patch_appends(monkeypatch, fail_at):
    state = {"writes": 0, "fail_at": fail_at}

    def fake_open(path, mode="r", *args, **kwargs):
        real = open(path, mode, *args, **kwargs)
        return _FillingFile(real, state) if mode == "ab" else real

    monkeypatch.setattr(scoring, "open", fake_open, raising=False)
    return state


def test_disk_full_mid_run_is_a_one_line_error_and_the_rerun_finishes(tmp_path, tiny, monkeypatch):
    n = 9
    src = write_input(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    _patch_appends(monkeypatch, fail_at=2)  # the first batch is written, the second fills the disk
    with pytest.raises(JRTError) as info:
        score_file(src, out, model=tiny, max_new_tokens=1, batch_size=3)
    monkeypatch.undo()
    message = one_line(info)
    assert "No space left on device" in message and str(out) in message and "free disk space" in message
    kept = complete_rows(out)  # the half-written batch was cut away: whole rows only
    assert len(kept) == 3 and leftovers(tmp_path) == []
    done = score_file(src, out, model=tiny, max_new_tokens=1, batch_size=3)
    assert (done.done_before, done.scored_now) == (3, n - 3)
    rows = complete_rows(out)
    assert [r["line"] for r in rows] == list(range(1, n + 1))
    for row in kept:
        assert rows[row["line"] - 1] == row


def test_no_room_for_the_in_order_copy_still_finishes(tmp_path, tiny, monkeypatch):
    n = 6
    src = write_input(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(scoring.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 100))
    summary = score_file(src, out, model=tiny, max_new_tokens=1, batch_size=2)
    monkeypatch.undo()
    rows = complete_rows(out)
    assert sorted(r["line"] for r in rows) == list(range(1, n + 1))  # every row, once
    assert [r["line"] for r in rows] != list(range(1, n + 1))  # in the order they finished
    assert summary.in_input_order is False and summary.ok == n and leftovers(tmp_path) == []
    assert json.loads((tmp_path / "out.jsonl.summary.json").read_text())["in_input_order"] is False
    again = score_file(src, out, model=tiny, max_new_tokens=1)  # with room again, it is reordered
    assert again.in_input_order and [r["line"] for r in complete_rows(out)] == list(range(1, n + 1))


def test_a_disk_that_fills_during_the_in_order_copy_leaves_no_temporary_file(tmp_path, tiny, monkeypatch):
    n = 5
    src = write_input(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        if str(path).endswith("out.jsonl.tmp"):
            return _FillingFile(real_open(path, mode, *args, **kwargs), {"writes": 0, "fail_at": 1})
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(scoring, "open", fake_open, raising=False)
    summary = score_file(src, out, model=tiny, max_new_tokens=1, batch_size=2)
    monkeypatch.undo()
    assert summary.in_input_order is False and leftovers(tmp_path) == []
    assert sorted(r["line"] for r in complete_rows(out)) == list(range(1, n + 1))


# --- the lock, between real processes ------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from jrt_prompt.scoring import _OutputLock
    lock = _OutputLock(Path(sys.argv[1]))
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
    """
)

CONTENDER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from jrt_prompt.scoring import _OutputLock
    out, marker, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for _ in range(rounds):
        lock = _OutputLock(out, wait=True)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            print("two holders at once", flush=True)
            sys.exit(1)
        os.close(fd)
        os.unlink(marker)
        lock.release()
    """
)


def _jrt(*args):
    return [sys.executable, "-c", "from jrt_cli.main import app; app()", *map(str, args)]


def test_a_run_is_refused_while_another_process_holds_the_output(tmp_path, tiny, tiny_dir):
    src = write_input(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(JRTError, match="another scoring run"):
            score_file(src, out, model=tiny, max_new_tokens=1)
        cmd = _jrt(
            "score", src, "--out", out, "--model", tiny_dir, "--device", "cpu", "--max-new-tokens", "1"
        )
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and "another scoring run" in second.stderr
        assert second.stderr.strip().count("\n") == 0 and "Traceback" not in second.stderr
        assert not out.exists()
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    score_file(src, out, model=tiny, max_new_tokens=1)
    assert len(complete_rows(out)) == 3 and leftovers(tmp_path) == []


def test_the_lock_never_has_two_holders(tmp_path):
    out, marker = tmp_path / "out.jsonl", tmp_path / "held-by"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(out), str(marker), "150"], stdout=subprocess.PIPE
        )
        for _ in range(3)
    ]
    for proc in procs:
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, stdout.decode()
    assert leftovers(tmp_path) == []


# --- SIGTERM -------------------------------------------------------------------------------------


def test_sigterm_mid_run_releases_the_lock_and_the_rerun_finishes(tmp_path, tiny_dir):
    n = 24
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "context": f"Item {i}: {i * 7}.", "question": f"Item {i}?"}) + "\n"
            for i in range(n)
        )
    )
    out = tmp_path / "out.jsonl"
    cmd = _jrt("score", src, "--out", out, "--model", tiny_dir, "--device", "cpu", "--batch-size", "2",
               "--max-new-tokens", "6")  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= 4:
            break
        if proc.poll() is not None:
            pytest.fail("scoring finished before it could be terminated")
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    stopped = complete_rows(out)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")
    assert proc.returncode == 143, err.decode()[-2000:]
    message = err.decode().strip().splitlines()[-1]
    assert message.startswith("terminated (SIGTERM)") and "rerun the same command" in message
    assert "Traceback" not in err.decode()
    assert 4 <= len(stopped) < n and leftovers(tmp_path) == []
    done = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    rows = complete_rows(out)
    assert [r["line"] for r in rows] == list(range(1, n + 1))
    for row in stopped:
        assert rows[row["line"] - 1] == row


def test_cli_reports_filesystem_faults_in_one_line(tmp_path, tiny_dir):
    from jrt_cli.main import app

    src = write_input(tmp_path / "in.jsonl", 2)
    (tmp_path / "preds").mkdir()
    args = ["score", str(src), "--model", str(tiny_dir), "--device", "cpu", "--out", str(tmp_path / "preds")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "is a directory" in result.output
    assert "Traceback" not in result.output


def test_a_signal_during_a_write_is_raised_once_the_rows_are_complete(tmp_path):
    signals = scoring._Signals()
    out = tmp_path / "out.jsonl"
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with signals.installed():
        appender = scoring._Appender(out, signals)
        with pytest.raises(scoring.Terminated):
            with signals.critical():
                os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of a write
                appender.file.write(b'{"line": 1}\n')
                appender.file.flush()
            pytest.fail("SIGTERM was swallowed")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # outside a write: at once
            time.sleep(5)
        appender.close()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # restored
    assert complete_rows(out) == [{"line": 1}]
