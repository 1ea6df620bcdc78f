"""localinfer keeps itself off the network: the switches it sets, and the proof at the system-call level."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localinfer import offline
from tests.fixtures.tiny_models import write_models_toml

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "fixtures" / "offline_child.py"
STAY_ALIVE_S = 30  # ONNX Runtime's telemetry looks up its host 9, 14, 23 and 44 s after a session is created
SYSCALLS = "connect,sendto,sendmsg,sendmmsg"
# Whatever a user (or conftest) set is not inherited by the watched process: localinfer must set it itself.
SWITCH = re.compile(r"TELEMETRY|OFFLINE|TRACK", re.IGNORECASE)
_ADDRESS = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6?, "([^"]+)"')
_CALL = re.compile(rf"\b({SYSCALLS.replace(',', '|')})\((\d+),")


def _remote(line: str) -> bool:
    """An IPv4 or IPv6 address other than loopback (or one strace did not spell out) in a traced call."""
    if "sa_family=AF_INET" not in line:  # AF_UNIX, AF_NETLINK, AF_UNSPEC: local
        return False
    addresses = [ipaddress.ip_address(v4 or v6) for v4, v6 in _ADDRESS.findall(line)]
    addresses = [getattr(address, "ipv4_mapped", None) or address for address in addresses]
    return not addresses or not all(address.is_loopback for address in addresses)


def network_calls(strace_log: str) -> list[str]:
    """The traced calls that connect or send to the network: to an address other than loopback, or on a socket
    connected to one (a DNS query is a connect, then a send that names no address)."""
    found, connected = [], set()  # file descriptors connected to a remote address
    for line in strace_log.splitlines():
        call = _CALL.search(line)
        if call is None:
            continue
        name, fd = call.groups()
        remote = _remote(line) if "sa_family=" in line else fd in connected
        if name == "connect":
            (connected.add if remote else connected.discard)(fd)
        if remote:
            found.append(line)
    return found


def test_network_calls_are_told_from_local_ones():
    lookup = '1 connect(8, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0'
    query = '1 sendto(8, "\\262T\\1\\0\\6mobile\\6events", 50, MSG_NOSIGNAL, NULL, 0) = 50'
    sent = '2 sendto(3, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(443), inet_pton(AF_INET6, "2001:db8::1", &s'
    local = [
        '1 connect(9, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
        "1 sendto(9, {len=20, type=RTM_GETADDR}, 20, 0, {sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000000}, 12)",
        '1 sendto(5, "canary", 6, 0, {sa_family=AF_INET, sin_port=htons(9), sin_addr=inet_addr("127.0.0.1")}, 16)',
        '1 connect(4, {sa_family=AF_INET6, sin6_port=htons(80), inet_pton(AF_INET6, "::1", &sin6_addr)}, 28) = 0',
        '1 connect(6, {sa_family=AF_INET6, inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr)}, 28) = 0',
        '1 sendmsg(6, {msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="x", iov_len=1}], msg_iovlen=1}, 0) = 1',
        '1 recvfrom(8, "x", 1, 0, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, [16])',
        '1 connect(8, {sa_family=AF_UNIX, sun_path="/run/local"}, 110) = 0',  # fd 8 reused for a local socket
        '1 sendto(8, "local", 5, MSG_NOSIGNAL, NULL, 0) = 5',
    ]
    log = "\n".join([lookup, query, sent, *local])
    assert network_calls(log) == [lookup, query, sent]


def test_switches_are_set_and_the_hub_offline_is_a_default(monkeypatch):
    for name in [*offline.TELEMETRY_OFF, *offline.OFFLINE_BY_DEFAULT]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "0")  # telemetry switches are forced
    offline.go_offline()
    assert {name: os.environ[name] for name in offline.TELEMETRY_OFF} == offline.TELEMETRY_OFF
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "1" and os.environ["DO_NOT_TRACK"] == "1"
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a program that downloads from the Hub itself may say so
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    offline.go_offline()
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "0"


def test_libraries_imported_first_are_patched_or_named(monkeypatch, caplog):
    import huggingface_hub.constants
    import onnxruntime  # noqa: F401  imported before localinfer's switch, as a user's program might
    import transformers.utils.hub

    monkeypatch.delenv("ORT_DISABLE_TELEMETRY")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="localinfer"):
        offline.go_offline()
    assert huggingface_hub.constants.HF_HUB_OFFLINE and huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY
    assert transformers.utils.hub.is_offline_mode()
    assert len(caplog.records) == 1 and "onnxruntime was imported before localinfer" in caplog.text

    caplog.clear()  # switched off in the environment by the user: nothing to warn about
    offline.go_offline()
    assert not caplog.records


def test_nothing_leaves_the_machine_syscall_level(tiny, tmp_path):
    """A fresh process imports localinfer, exports and answers one query per task family, stays alive 30 s, and is
    watched by strace for connect and send calls to anything but loopback. It inherits none of the switches."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is not installed: this test watches a process's system calls with it (apt install strace)")
    models = write_models_toml(tmp_path / "models.toml", tiny)
    log = tmp_path / "strace.log"
    env = {name: value for name, value in os.environ.items() if not SWITCH.search(name)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [strace, "-f", "-qq", "--seccomp-bpf", "-s", "64", "-e", f"trace={SYSCALLS}", "-e", "signal=none"]
    command += ["-o", str(log)]
    command += [sys.executable, str(CHILD), str(models), str(tmp_path / "home"), str(STAY_ALIVE_S)]
    child = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    if child.returncode != 0:  # strace's own errors (ptrace not permitted, say) come first in stderr
        stderr = child.stderr if len(child.stderr) < 5000 else f"{child.stderr[:1500]}\n...\n{child.stderr[-3000:]}"
        pytest.fail(f"the watched process or strace failed (exit {child.returncode}):\n{stderr}")
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert all(report["answered"].values()) and len(report["answered"]) == 6, report
    assert (tmp_path / "home" / "exports").is_dir()  # the exports happened inside the watch
    traced = log.read_text(errors="replace")
    assert "localinfer-offline-canary" in traced, f"strace saw no loopback canary; it did not watch:\n{traced[:2000]}"
    assert not report["python_attempts"], f"Python code opened sockets: {report['python_attempts']}"
    calls = network_calls(traced)
    assert not calls, f"{len(calls)} network calls from a localinfer process:\n" + "\n".join(calls[:10])
