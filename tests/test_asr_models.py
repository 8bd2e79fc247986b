"""`dmd models`: installing a model from a zip (file:// and a local HTTP server on loopback), with
its checks, atomically; listing and finding installed models.

There is no internet here: the zips are made by the tests and hold a fake Vosk model folder (the
files a Vosk model has, with made-up content), which is enough for the mechanics. The real Vosk
engine on a real model is in test_asr_vosk.py."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.asr import models
from workers.asr.models import ModelInstallError, find_model, install_model, list_models
from workers.cli import build_parser


def fake_vosk_zip(path: Path, top: str | None = "vosk-model-tiny-xx-0.1", extra: dict[str, bytes] | None = None
                  ) -> Path:
    """A zip laid out like Vosk's: one top folder with am/, conf/, graph/, ivector/."""
    files = {
        "am/final.mdl": b"\0" * 5000, "conf/model.conf": b"--beam=10.0\n", "conf/mfcc.conf": b"--use-energy=false\n",
        "graph/HCLr.fst": b"\1" * 3000, "graph/words.txt": b"<eps> 0\nhello 1\n", "ivector/final.ie": b"\2" * 100,
        "README": b"a fake model for tests\n", **(extra or {}),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(f"{top}/{name}" if top else name, data)
    return path


@contextlib.contextmanager
def serve(directory: Path, lie_about_length: bool = False) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving `directory`; with `lie_about_length` it announces more
    bytes than it sends (a connection that breaks off)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, *args) -> None:
            pass

        def send_header(self, key: str, value: str) -> None:
            if lie_about_length and key.lower() == "content-length":
                value = str(int(value) + 1000)
            super().send_header(key, value)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_model_installs_from_a_file_url_into_its_own_folder(tmp_path: Path) -> None:
    archive = fake_vosk_zip(tmp_path / "model.zip")
    target = tmp_path / "models"
    path = install_model("vosk-model-tiny-xx-0.1", archive.as_uri(), directory=target, progress=False,
                         expect_kind="vosk")
    assert path == target / "vosk-model-tiny-xx-0.1"
    assert (path / "am" / "final.mdl").stat().st_size == 5000 and (path / "graph" / "words.txt").is_file()
    record = json.loads((path / ".dmd-model.json").read_text())
    assert record["zip_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest() and record["kind"] == "vosk"
    assert leftovers(target) == []  # no partial download, no unpack folder
    assert find_model("vosk-model-tiny-xx-0.1", target) == path
    [listed] = list_models(target)
    assert (listed.name, listed.kind, listed.source) == ("vosk-model-tiny-xx-0.1", "vosk", archive.as_uri())


def test_a_model_installs_over_http_with_progress_and_a_checked_sha256(tmp_path: Path, capsys) -> None:
    (tmp_path / "served").mkdir()
    archive = fake_vosk_zip(tmp_path / "served" / "m.zip")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    with serve(tmp_path / "served") as base:
        path = install_model("my-model", f"{base}/m.zip", directory=tmp_path / "models", sha256=digest.upper())
        assert models.model_kind(path) == "vosk"
        with pytest.raises(ModelInstallError, match=r"already installed .* use --force"):
            install_model("my-model", f"{base}/m.zip", directory=tmp_path / "models", progress=False)
        (path / "marker").write_text("old")
        install_model("my-model", f"{base}/m.zip", directory=tmp_path / "models", force=True, progress=False)
        assert not (path / "marker").exists()  # replaced whole
        with pytest.raises(ModelInstallError, match=r"sha256 .*, expected 0000"):
            install_model("other", f"{base}/m.zip", directory=tmp_path / "models", sha256="0" * 64, progress=False)
        with pytest.raises(ModelInstallError, match="answered 404"):
            install_model("missing", f"{base}/nothing.zip", directory=tmp_path / "models", progress=False)
    assert "my-model" in capsys.readouterr().err  # the progress bar names the model
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["my-model"]


def test_a_download_that_breaks_off_installs_nothing(tmp_path: Path) -> None:
    (tmp_path / "served").mkdir()
    fake_vosk_zip(tmp_path / "served" / "m.zip")
    with serve(tmp_path / "served", lie_about_length=True) as base, \
            pytest.raises(ModelInstallError, match=r"(stopped at \d+ of \d+ bytes|broke off)"):
        install_model("m", f"{base}/m.zip", directory=tmp_path / "models", progress=False, timeout=5)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_damaged_or_unsafe_zip_installs_nothing(tmp_path: Path) -> None:
    target = tmp_path / "models"
    good = fake_vosk_zip(tmp_path / "good.zip").read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelInstallError, match="not a readable zip"):
        install_model("m", truncated.as_uri(), directory=target, progress=False)
    corrupt = bytearray(good)
    offset = good.index(b"PK\x03\x04") + 30 + len("vosk-model-tiny-xx-0.1/am/final.mdl") + 2
    corrupt[offset] ^= 0xFF  # flip a byte of the first member's compressed data
    (tmp_path / "corrupt.zip").write_bytes(bytes(corrupt))
    with pytest.raises(ModelInstallError, match=r"(damaged|not a readable zip)"):
        install_model("m", (tmp_path / "corrupt.zip").as_uri(), directory=target, progress=False)
    with zipfile.ZipFile(tmp_path / "slip.zip", "w") as z:
        z.writestr("../../evil.txt", b"x")
    with pytest.raises(ModelInstallError, match="outside the model folder"):
        install_model("m", (tmp_path / "slip.zip").as_uri(), directory=target, progress=False)
    assert not (tmp_path / "evil.txt").exists()
    fake_vosk_zip(tmp_path / "flat.zip", top=None, extra={"model.bin": b"x"})
    with zipfile.ZipFile(tmp_path / "notvosk.zip", "w") as z:
        z.writestr("readme.txt", b"hello")
    with pytest.raises(ModelInstallError, match="does not hold a vosk model"):
        install_model("m", (tmp_path / "notvosk.zip").as_uri(), directory=target, progress=False, expect_kind="vosk")
    assert list(target.iterdir()) == []
    # a zip without a top folder installs its files directly
    path = install_model("flat", (tmp_path / "flat.zip").as_uri(), directory=target, progress=False)
    assert (path / "am" / "final.mdl").is_file()


def test_no_network_says_what_to_do_instead(tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError, match=r"cannot download .* --url file:///path/to/model\.zip"):
        install_model("m", "http://127.0.0.1:9/none.zip", directory=tmp_path, progress=False, timeout=2)
    assert list(tmp_path.iterdir()) == []


def test_names_are_checked_and_the_default_url_is_vosks() -> None:
    with pytest.raises(ModelInstallError, match="not usable as a folder name"):
        models.validate_name("../evil")
    with pytest.raises(ModelInstallError, match=r"no '\.zip'"):
        models.validate_name("vosk-model-small-en-us-0.15.zip")
    assert models.VOSK_MODELS_URL.format(name="vosk-model-small-en-us-0.15") == \
        "https://alphacephei.com/vosk/models/vosk-model-small-en-us-0.15.zip"


def test_the_command_installs_lists_and_finds_models(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DMD_MODELS", str(tmp_path / "models"))
    archive = fake_vosk_zip(tmp_path / "m.zip")
    parser = build_parser()

    def dmd(*argv: str) -> int:
        args = parser.parse_args(["models", *argv])
        return args.func(args)

    assert dmd("install", "vosk-model-tiny-xx-0.1", "--url", archive.as_uri(), "--quiet") == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "models" / "vosk-model-tiny-xx-0.1")
    assert "dmd asr --vosk-model" in err
    assert dmd("path", "vosk-model-tiny-xx-0.1") == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "models" / "vosk-model-tiny-xx-0.1")
    assert dmd("path", "nothing") == 1
    assert "dmd models install nothing" in capsys.readouterr().err
    assert dmd("list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listed["models"]] == ["vosk-model-tiny-xx-0.1"]
    assert listed["embedded"]["name"] == "whisper-tiny.en"
    assert dmd("list") == 0
    assert "vosk-model-tiny-xx-0.1" in capsys.readouterr().out
    assert dmd("install", "vosk-model-tiny-xx-0.1", "--url", archive.as_uri(), "--quiet") == 2
    assert "already installed" in capsys.readouterr().err
