"""The process-wide tuning pyinfra runs under (gpunode.bootstrap.orchestration.green)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_paramiko_checks_packet_macs_with_the_c_comparison() -> None:
    # In a child process: gevent's patch_all must not reach the test runner.
    script = textwrap.dedent("""
        import hmac, inspect
        from gpunode.bootstrap.orchestration.green import patch_for_pyinfra
        patch_for_pyinfra()
        import paramiko.packet, paramiko.util
        from gevent import monkey
        assert monkey.is_module_patched("socket")
        assert paramiko.util.constant_time_bytes_eq is hmac.compare_digest
        # The replacement only works while packet.py looks the function up at call time.
        source = inspect.getsource(paramiko.packet.Packetizer.read_message)
        assert "util.constant_time_bytes_eq(" in source, "paramiko changed how it compares MACs"
        same = paramiko.util.constant_time_bytes_eq
        assert same(b"\\x01" * 32, b"\\x01" * 32)
        assert not same(b"\\x01" * 32, b"\\x01" * 31 + b"\\x02")
        assert not same(b"\\x01" * 32, b"\\x01" * 20)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
