"""A real OCI registry for the tests (Debian's docker-registry, distribution 2.8, started on a
free 127.0.0.1 port and stopped by PID), and `rfc push` into it: tests/e2e/test_oci.py and the
model-management tests (test_model_verbs.py, test_swap.py) share them."""

import re
import shutil
import signal
import subprocess
from pathlib import Path


from tests.conftest import rfc
from tests.e2e.conftest import answers_within, free_port, start_on_free_ports

REGISTRY = shutil.which("docker-registry")


class Registry:
    """docker-registry serving a fresh storage directory on 127.0.0.1:PORT, its access log kept."""

    def __init__(self, root: Path, htpasswd: Path | None = None):
        """The port is picked here and handed to the registry's config (it binds no port 0)."""
        self.storage = root / "storage"
        self.log_path = root / "registry.log"
        self._log = None

        def start() -> subprocess.Popen:
            self.port = free_port()
            self.host = f"127.0.0.1:{self.port}"
            config = root / "config.yml"
            config.write_text(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.host}\n"
                + (f"auth:\n  htpasswd:\n    realm: rfc-test\n    path: {htpasswd}\n" if htpasswd else "")
            )
            if self._log is not None:
                self._log.close()
            self._log = open(self.log_path, "wb")
            return subprocess.Popen([REGISTRY, "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT)

        def answers(proc: subprocess.Popen) -> bool:
            return answers_within(proc, f"http://{self.host}/v2/", (200, 401), 30)

        self.proc = start_on_free_ports(start, answers, self.log, "docker-registry")

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
