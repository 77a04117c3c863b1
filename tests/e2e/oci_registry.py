"""A real OCI registry for the tests (Debian's docker-registry, distribution 2.8, started on a
free 127.0.0.1 port and stopped by PID), and `rfc push` into it: tests/e2e/test_oci.py and the
model-management tests (test_model_verbs.py, test_swap.py) share them."""

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.conftest import rfc
from tests.e2e.conftest import free_port

REGISTRY = shutil.which("docker-registry")
BIND_ATTEMPTS = 3  # ports tried when another process takes the one picked before the registry binds it


class Registry:
    """docker-registry serving a fresh storage directory on 127.0.0.1:PORT, its access log kept."""

    def __init__(self, root: Path, htpasswd: Path | None = None):
        """The port is picked here and handed to the registry's config (it binds no port 0): should
        another process take it first, the registry exits on the bind and starts again on another."""
        self.storage = root / "storage"
        self.log_path = root / "registry.log"
        for _attempt in range(BIND_ATTEMPTS):
            self.port = free_port()
            self.host = f"127.0.0.1:{self.port}"
            config = root / "config.yml"
            config.write_text(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.host}\n"
                + (f"auth:\n  htpasswd:\n    realm: rfc-test\n    path: {htpasswd}\n" if htpasswd else "")
            )
            self._log = open(self.log_path, "wb")
            self.proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT)
            if self._answers():
                return
            if self.proc.poll() is None:  # up but silent: no other port would help
                self.proc.kill()
                self.proc.wait()
            if "address already in use" not in self.log():
                break
            self._log.close()
        raise AssertionError("docker-registry did not answer:\n" + self.log())

    def _answers(self) -> bool:
        """Whether the registry answers /v2/ within 30 s (False once its process has ended)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if requests.get(f"http://{self.host}/v2/", timeout=1).status_code in (200, 401):
                    return True
            except requests.RequestException:  # not up yet, or another process's socket that says nothing
                pass
            time.sleep(0.05)
        return False

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def mark(self) -> int:
        return len(self.log())

    def uploaded_since(self, mark: int) -> set[str]:
        """Digests of the blobs whose uploads completed after `mark` (the registry's own log)."""
        text = self.log()[mark:]
        return {
            m.group(1)
            for m in re.finditer(
                r'"PUT /v2/[^ ]*/blobs/uploads/[^ ]*digest=sha256(?::|%3A)([0-9a-f]{64})[^"]*" '
                r"201",
                text,
            )
        }

    def blob_gets_since(self, mark: int, digest: str) -> int:
        return len(re.findall(rf'"GET /v2/[^ ]*/blobs/sha256:{digest} HTTP/1.1" 20[06]', self.log()[mark:]))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def push(bundle: Path, ref: str) -> str:
    out = rfc("push", bundle, ref, "--insecure", check=True)
    digest = out.stdout.strip().rsplit("@", 1)[1]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), out.stdout
    return digest
