"""The Docker image: with a container engine, built and run for real; without one (this
project's CI has none), its file-system steps are replayed as far as they go outside a
container: the Dockerfile's COPY lines into a fresh folder, its ``pip install`` into a fresh
virtual environment (the dependencies from the project's .venv instead of PyPI: tests stay off
the network), its /data and /config, and the entrypoint, run as uid 10001 against a read-only
config folder, with a named volume's /data and with a bind mount's."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.synapse import REPO

UID = 10001
PIP = [sys.executable, "-m", "pip"]
NO_DEPS = ["--no-deps", "--no-index"]
CONFIG = """\
[matrix]
homeserver = "http://127.0.0.1:1"
user_id = "@callbot:localhost"
password = "not-a-real-one"

[bot]
data_dir = "./data"

[plugins.recorder]
enabled = true

[plugins.transcriber]
enabled = true
"""


@dataclass(frozen=True)
class Dockerfile:
    copies: list[tuple[str, str]]  # (source, destination)
    env: dict[str, str]
    user: str
    pip_install: str  # what the RUN pip install line installs
    entrypoint: list[str]
    cmd: list[str]
    comment: str


def dockerfile() -> Dockerfile:
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)  # continuation lines
    copies, env, user, pip, entry, cmd = [], {}, "", "", [], []
    for line in joined.splitlines():
        word, _, rest = line.partition(" ")
        if word == "COPY":
            *sources, dest = rest.split()
            copies += [(s, dest) for s in sources]
        elif word == "ENV":
            env.update(dict(kv.split("=", 1) for kv in shlex.split(rest)))
        elif word == "USER":
            user = rest.strip()
        elif word == "RUN" and rest.startswith("pip install "):
            pip = shlex.split(rest)[2]
        elif word in ("ENTRYPOINT", "CMD"):
            value = [s.strip().strip('"') for s in rest.strip().strip("[]").split(",")]
            entry, cmd = (value, cmd) if word == "ENTRYPOINT" else (entry, value)
    comment = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    return Dockerfile(copies, env, user, pip, entry, cmd, comment)


def test_the_readme_runs_the_image_as_the_dockerfile_says() -> None:
    d = dockerfile()
    readme = (REPO / "README.md").read_text()
    runs = re.findall(r"^docker run .*$", readme, re.MULTILINE)
    assert runs, "the README shows how to run the image"
    for line in runs:
        assert f"#   {line}" in d.comment.splitlines()
    assert "/config:ro" in runs[0]  # the config is mounted read-only
    assert d.env["CALLBOT_BOT_DATA_DIR"] == "/data"  # whatever the config's data_dir says
    assert d.user == "callbot" and d.entrypoint == ["callbot-entrypoint"]
    assert d.cmd == ["run", "-c", "/config/config.toml"]


def docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.skipif(
    not docker_works(),
    reason="no container engine here (docker info fails): "
    "test_the_images_steps_outside_a_container replays the Dockerfile instead",
)
def test_the_image_builds_and_says_what_is_wrong_with_a_bind_mount(tmp_path: Path) -> None:
    tag = "matrix-callbot-test"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(REPO)], check=True, timeout=1800)
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.toml").write_text(CONFIG)
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # the host's, not uid 10001's
    base = ["docker", "run", "--rm", "-v", f"{config}:/config:ro"]
    ok = subprocess.run([*base, tag, "check-config", "/config/config.toml"], timeout=120)
    assert ok.returncode == 0
    bad = subprocess.run(
        [*base, "-v", f"{data}:/data", tag], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "--user" in bad.stderr and "chown" in bad.stderr


@dataclass
class Image:
    """The image's file system, as far as it can be made outside a container."""

    root: Path
    venv: Path

    def run(self, data: Path, *args: str, uid: int = UID) -> subprocess.CompletedProcess[str]:
        """The entrypoint, as ``uid``, with the image's environment (/data where ``data`` is)."""
        env = {**dockerfile().env, "CALLBOT_BOT_DATA_DIR": str(data)}
        env |= {"PATH": f"{self.venv}/bin:{self.root}/usr/local/bin:/usr/bin:/bin", "HOME": "/"}
        who = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return subprocess.run(
            ["setpriv", *who, "env", "-i", *(f"{k}={v}" for k, v in env.items()), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
        )


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    if os.geteuid() != 0:
        pytest.skip("runs the image's user (uid 10001), which needs root: scripts/test.sh as root")
    d = dockerfile()
    # Readable by uid 10001 (pytest's tmp_path is root's alone).
    root = Path(tempfile.mkdtemp(prefix="callbot-image-"))
    root.chmod(0o755)
    try:
        app = root / "app"
        app.mkdir()
        for source, dest in d.copies:  # WORKDIR /app
            src = REPO / source
            target = root / dest.lstrip("/") if dest.startswith("/") else app / dest
            target = target / src.name if dest.endswith("/") else target
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, target)
        # The Dockerfile's pip install, from what it copied: the wheel built here, its
        # dependencies those of the project's .venv (a .pth), a Python uid 10001 can run.
        wheels = root / "wheels"
        spec = d.pip_install  # ".[all]"
        assert spec.startswith(".")
        subprocess.run(
            [*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(app)],
            check=True,
            capture_output=True,
        )
        (wheel,) = wheels.glob("matrix_callbot-*.whl")
        venv = root / "venv"
        python = shutil.which("python3.11", path="/usr/bin:/usr/local/bin") or sys.executable
        subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
        spec_of = f"{wheel}{spec[1:]}"  # the wheel, with the extras the Dockerfile names
        subprocess.run(
            [*PIP, "--python", str(venv / "bin" / "python"), "install", "-q", *NO_DEPS, spec_of],
            check=True,
            capture_output=True,
        )
        (site,) = (venv / "lib").glob("python3*/site-packages")
        (site / "_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        for path in (root / "usr" / "local" / "bin").iterdir():
            assert os.access(path, os.X_OK), f"{path.name} in the image must be executable"
        # The RUN line's folders: /data owned by the image's user, /config a read-only mount.
        (root / "data").mkdir(mode=0o700)
        os.chown(root / "data", UID, UID)
        config = root / "config"
        config.mkdir()
        (config / "config.toml").write_text(CONFIG)
        (config / "config.toml").chmod(0o444)
        config.chmod(0o555)
        yield Image(root, venv)
    finally:
        (root / "config").chmod(0o755) if (root / "config").exists() else None
        shutil.rmtree(root)


def test_the_images_steps_outside_a_container(image: Image) -> None:
    if not docker_works():  # so that CI's summary says which of the two checked the image
        warnings.warn(
            "no container engine: the image was checked by replaying the Dockerfile's steps "
            "outside a container, not built",
            stacklevel=1,
        )
    config = str(image.root / "config" / "config.toml")
    data = image.root / "data"
    # The installed image reads its read-only config (plugins and their extras found).
    checked = image.run(data, "callbot-entrypoint", "check-config", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # A named volume's /data: the bot runs as uid 10001, keeps its data in /data (not next to
    # the config, which the example's data_dir = "./data" would mean) and gets as far as the
    # homeserver, which is not there.
    ran = image.run(data, "callbot-entrypoint", "run", "-c", config)
    assert ran.returncode == 1 and "cannot reach the homeserver" in ran.stderr, ran.stderr
    assert (data / "store").is_dir() and (data / "store").stat().st_uid == UID
    assert not (image.root / "config" / "data").exists()

    # A bind-mounted host folder that uid 10001 cannot write: one explanation, both fixes.
    host = image.root / "host-data"
    host.mkdir(mode=0o755)
    refused = image.run(host, "callbot-entrypoint", "run", "-c", config)
    assert refused.returncode == 2
    assert f"{host} is not writable by this container's user (uid {UID}" in refused.stderr
    assert "belongs to uid 0 with mode 755" in refused.stderr
    assert '--user "$(id -u):$(id -g)"' in refused.stderr
    assert f"chown -R {UID}:{UID}" in refused.stderr
    assert "Traceback" not in refused.stderr

    # ... and the first fix: the container run as the folder's owner (--user).
    os.chown(host, 4242, 4242)
    as_owner = image.run(host, "callbot-entrypoint", "run", "-c", config, uid=4242)
    assert "cannot reach the homeserver" in as_owner.stderr, as_owner.stderr
    assert (host / "store").stat().st_uid == 4242
