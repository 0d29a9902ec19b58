"""CPU threads for training: the cores other jobs leave free, and the oversubscription flag."""
import pytest

from handgan import device


@pytest.mark.parametrize("others, cores, expected", [
    (0.0, 2, 2), (0.6, 2, 1), (1.0, 2, 1), (5.0, 2, 1), (1.0, 16, 15), (0.2, 16, 16),
])
def test_training_threads_leave_other_jobs_their_cores(monkeypatch, others, cores, expected):
    monkeypatch.setattr(device, "other_runnable", lambda **kw: others)
    monkeypatch.setattr(device, "cores", lambda: cores)
    assert device.training_threads() == expected


@pytest.mark.parametrize("others, threads, busy", [(0.0, 2, False), (1.0, 1, False),
                                                  (1.0, 2, True), (3.0, 1, True)])
def test_oversubscribed_when_threads_and_other_jobs_outnumber_the_cores(monkeypatch, others,
                                                                        threads, busy):
    monkeypatch.setattr(device, "other_runnable", lambda **kw: others)
    monkeypatch.setattr(device, "cores", lambda: 2)
    assert device.oversubscribed(threads) is busy


def test_other_runnable_reads_the_machine():
    assert device.other_runnable(samples=2, interval_s=0.0) >= 0.0


def test_a_training_process_does_not_count_its_own_threads_as_other_jobs(monkeypatch, tmp_path):
    # /proc/loadavg's 4th field: 3 runnable = this process's 2 threads + 1 other job
    import builtins

    real_open = builtins.open
    fake = tmp_path / "loadavg"
    fake.write_text("1.00 1.00 1.00 3/120 999\n")
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(
        fake if path == "/proc/loadavg" else path, *a, **k))
    assert device.other_runnable(samples=1, own=2) == 1.0
    monkeypatch.setattr(device, "cores", lambda: 2)
    assert device.oversubscribed(2)  # 1 other + 2 threads on 2 cores
    fake.write_text("1.00 1.00 1.00 2/120 999\n")
    assert not device.oversubscribed(2)  # only this process's 2 threads
