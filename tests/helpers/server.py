"""``simgen serve`` as a real subprocess on 127.0.0.1 for the tests."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


class Server:
    """A ``simgen serve`` subprocess on an ephemeral port; :meth:`wait` until it answers /healthz."""

    def __init__(self, folder: Path, *flags: str):
        cmd = [sys.executable, "-m", "simgen", "serve", str(folder), "--port", "0", "--quiet", *flags]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.url: str | None = None
        self._found = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            if self.url is None and " on http://" in line:
                self.url = line.split(" on ", 1)[1].split("/ ", 1)[0]
                self._found.set()

    def wait(self, timeout: float = 90.0) -> Server:
        deadline = time.monotonic() + timeout
        if not self._found.wait(timeout):
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=5).read()
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("server never answered:\n" + "".join(self.log)) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
