"""`dmd models`: speech models on this machine (list, install, path).

    dmd models list                                   # what is installed, and the embedded Whisper
    dmd models install vosk-model-small-en-us-0.15    # from alphacephei.com/vosk/models (needs internet)
    dmd models install my-model --url https://host/model.zip   (or file:///path/model.zip)
    dmd models path vosk-model-small-en-us-0.15       # the folder to give to `dmd asr --vosk-model`

Models live in one folder: $DMD_MODELS, else ~/.cache/live-dmd/models. An install downloads the zip
next to it (a hidden partial file), checks that every byte the server announced arrived, that the zip
is sound (every member's CRC) and safe (no absolute paths, no `..`, no links), and its sha256 when
given; it unpacks into a hidden folder beside the target and renames that into place, so a model
folder is either complete or absent, never half-written, and a failed install leaves nothing behind.
A zip holding one top-level folder (as Vosk's do) installs that folder's content. Each installed
model records where it came from in `.dmd-model.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

MODELS_ENV = "DMD_MODELS"
DEFAULT_MODELS_DIR = Path("~/.cache/live-dmd/models")
VOSK_MODELS_URL = "https://alphacephei.com/vosk/models/{name}.zip"
RECORD = ".dmd-model.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ModelInstallError(RuntimeError):
    """An install failed; the message says why and what to do. Nothing was left installed."""


def models_dir() -> Path:
    """Where models are installed: $DMD_MODELS, else ~/.cache/live-dmd/models."""
    return Path(os.environ.get(MODELS_ENV) or DEFAULT_MODELS_DIR).expanduser()


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(".zip"):
        raise ModelInstallError(f"model name {name!r} is not usable as a folder name: use letters, digits, '.', '_' "
                                f"and '-' (no '.zip'), e.g. vosk-model-small-en-us-0.15")
    return name


def find_model(name: str, directory: Path | None = None) -> Path | None:
    """The folder of installed model `name`, or None."""
    if not _NAME.fullmatch(name or ""):
        return None
    path = (directory or models_dir()) / name
    return path if path.is_dir() else None


def model_kind(path: Path) -> str:
    """"vosk", "whisper" (CTranslate2) or "unknown", from the files in `path`."""
    if (path / "am" / "final.mdl").is_file() or (path / "final.mdl").is_file():
        return "vosk"
    if (path / "model.bin").is_file() and (path / "config.json").is_file():
        return "whisper"
    return "unknown"


@dataclass(frozen=True)
class InstalledModel:
    name: str
    path: str
    kind: str
    bytes: int
    source: str


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def list_models(directory: Path | None = None) -> list[InstalledModel]:
    """The models installed in `directory` (default `models_dir()`), by name."""
    directory = directory or models_dir()
    if not directory.is_dir():
        return []
    out = []
    for path in sorted(directory.iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        source = ""
        with contextlib.suppress(OSError, ValueError):
            source = json.loads((path / RECORD).read_text()).get("url", "")
        out.append(InstalledModel(path.name, str(path), model_kind(path), _folder_bytes(path), source))
    return out


# --- installing -------------------------------------------------------------------------------------

class _Progress:
    """Download progress on standard error: a tqdm bar where it is installed, else a line a second."""

    def __init__(self, name: str, total: int | None, enabled: bool) -> None:
        self.name, self.total, self.enabled = name, total, enabled
        self.done = 0
        self.bar: Any = None
        self._last = 0.0
        self._start = time.monotonic()
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, file=sys.stderr)
            except ImportError:
                self.bar = None

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= 1.0:
            self._last = now
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            rate = self.done / max(1e-9, now - self._start) / 1e6
            print(f"{self.name}: {self.done / 1e6:.1f}{f'/{self.total / 1e6:.1f}' if self.total else ''} MB"
                  f"{share}, {rate:.1f} MB/s", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _download(url: str, target: Path, name: str, progress: bool, timeout: float) -> tuple[int, str]:
    """Download `url` into `target`; returns (bytes, sha256). Raises ModelInstallError."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise ModelInstallError(f"{url}: the server answered {exc.code} {exc.reason}: check the model name "
                                f"(see https://alphacephei.com/vosk/models) or the URL") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelInstallError(f"cannot download {url}: {reason}. This needs a machine with internet access; "
                                f"elsewhere, download the zip and install it with --url file:///path/to/model.zip"
                                ) from None
    digest = hashlib.sha256()
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = _Progress(name, total, progress)
        received = 0
        try:
            with open(target, "wb") as out:
                while True:
                    try:
                        block = response.read(1 << 16)
                    except (OSError, ValueError, http.client.HTTPException) as exc:
                        raise ModelInstallError(f"download of {url} broke off after {received} bytes ({exc}): "
                                                f"try again") from None
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
    if total is not None and received != total:
        raise ModelInstallError(f"download of {url} stopped at {received} of {total} bytes: try again")
    return received, digest.hexdigest()


def _safe_members(archive: zipfile.ZipFile, url: str) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if not members:
        raise ModelInstallError(f"{url} is an empty zip")
    for info in members:
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
            raise ModelInstallError(f"{url} holds {info.filename!r}, a path outside the model folder: refusing to "
                                    f"unpack it")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ModelInstallError(f"{url} holds a symbolic link {info.filename!r}: refusing to unpack it")
    return members


def _top_folder(members: list[zipfile.ZipInfo]) -> str | None:
    """The one folder every member is inside, if there is one."""
    tops = {PurePosixPath(m.filename.replace("\\", "/")).parts[0] for m in members}
    if len(tops) != 1:
        return None
    top = tops.pop()
    return top if all(len(PurePosixPath(m.filename).parts) > 1 or m.is_dir() for m in members) else None


def install_model(name: str, url: str | None = None, *, directory: Path | None = None, sha256: str | None = None,
                  force: bool = False, progress: bool = True, timeout: float = 60.0, expect_kind: str | None = None
                  ) -> Path:
    """Download the zip at `url` (default: Vosk's model `name`) and install it as `directory`/`name`.
    Returns the model's folder. `expect_kind` ("vosk") refuses a zip that does not hold such a model.
    Raises ModelInstallError with the reason; a failed install leaves nothing behind."""
    validate_name(name)
    if url is None:
        url = VOSK_MODELS_URL.format(name=name)
        expect_kind = expect_kind or "vosk"
    directory = (directory or models_dir()).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    if final.exists() and not force:
        raise ModelInstallError(f"{name} is already installed at {final}: use --force to replace it")
    part = Path(tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".zip.part")[1])
    unpack = Path(tempfile.mkdtemp(dir=directory, prefix=f".{name}.", suffix=".unpack"))
    try:
        size, digest = _download(url, part, name, progress, timeout)
        if sha256 and digest != sha256.lower():
            raise ModelInstallError(f"{url} has sha256 {digest}, expected {sha256.lower()}: the file is not the one "
                                    f"expected (or was damaged): nothing installed")
        try:
            with zipfile.ZipFile(part) as archive:
                members = _safe_members(archive, url)
                bad = archive.testzip()
                if bad is not None:
                    raise ModelInstallError(f"{url}: {bad!r} in the zip is damaged (CRC mismatch): try again")
                unpacked = sum(m.file_size for m in members)
                free = shutil.disk_usage(directory).free
                if unpacked > free:
                    raise ModelInstallError(f"{name} unpacks to {unpacked / 1e6:.0f} MB but {directory} has "
                                            f"{free / 1e6:.0f} MB free: free some space or set {MODELS_ENV}")
                archive.extractall(unpack, members)
                top = _top_folder(members)
        except zipfile.BadZipFile as exc:
            raise ModelInstallError(f"{url} is not a readable zip ({exc}): try again, or check the URL") from None
        except (zlib.error, EOFError) as exc:
            raise ModelInstallError(f"{url}: the zip is damaged ({exc}): try again") from None
        root = unpack / top if top else unpack
        kind = model_kind(root)
        if expect_kind and kind != expect_kind:
            raise ModelInstallError(f"{url} does not hold a {expect_kind} model (found: {kind}; a Vosk model has "
                                    f"am/final.mdl): nothing installed")
        (root / RECORD).write_text(json.dumps({"name": name, "url": url, "zip_bytes": size, "zip_sha256": digest,
                                               "kind": kind, "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                              indent=2))
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=directory, prefix=f".{name}.", suffix=".old"))
            os.replace(final, old / name)
        os.replace(root, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(unpack, ignore_errors=True)


def embedded_whisper_status() -> dict[str, Any]:
    from .whisper import WHISPER_PACKAGE, WHISPER_PACKAGE_VERSION, WhisperModelError, embedded_whisper_path

    status = {"name": "whisper-tiny.en", "kind": "whisper", "source": f"{WHISPER_PACKAGE} {WHISPER_PACKAGE_VERSION}"}
    try:
        status.update(path=str(embedded_whisper_path(check=True)), status="ok (sha256 checked)")
    except WhisperModelError as exc:
        status.update(path="", status=str(exc))
    return status
