"""The board's disk: a stock Debian 12 built from Debian's packages, cached outside the checkout.

Two layers, each keyed by a hash of its inputs so a change rebuilds only what it touches:

- rootfs-<arch>-<key>.tar: mmdebstrap of bookworm (minbase + systemd, the kernel, python3: what a
  stock board has before a technician arrives), plus an offline apt repository in /srv/debs holding
  the .debs that scripts/install.sh asks for (and their dependencies and Recommends, as apt on a
  board would install them). Key: the package lists, the hooks, the packages install.sh names.
- disk-<arch>-<key>.raw + vmlinuz/initrd: the rootfs plus the project's wheels and their dependencies
  (downloaded on the host for the guest's platform) in /srv/wheels, pip and apt pointed at those
  local sources only, the guest agent, and boot settings; `mkfs.ext4 -d` (no loop mounts). Key:
  the rootfs key, constraints.txt, setup.cfg, the guest agent and these settings.

Runs use a qcow2 overlay on the raw disk, so the cached base stays clean. Two runs may share the
cache at once (another checkout, another `--workdir`): builds take turns under `.build.lock`, and a
run holds a shared lock on its disk's `.inuse` file for as long as it lives, so a build for other
inputs never prunes a disk that a running board boots from (its overlay's backing file).
"""

from __future__ import annotations

import configparser
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from systemtest.util import StepFailed, log

ROOT = Path(__file__).resolve().parent.parent
FORMAT = "3"  # bump when the layout below changes in a way the inputs do not show
SUITE = "bookworm"
DISK_SIZE = "4G"

# A stock board: what Raspberry Pi OS Lite / a Debian server has before the installer runs.
STOCK_PACKAGES = [
    "systemd", "systemd-sysv", "udev", "dbus", "kmod", "iproute2", "procps", "e2fsprogs", "netbase",
    "python3", "initramfs-tools", "less",
]
KERNEL = {"amd64": "linux-image-amd64", "arm64": "linux-image-arm64"}
# Offered by the offline repo beside what install.sh names: the candidates for issue #16.1's fix.
REPO_EXTRA = ["libgl1", "libegl-mesa0", "libgl1-mesa-dri", "libgles2"]
INITRD_MODULES = {
    "amd64": ["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"],
    "arm64": ["virtio_pci", "virtio_mmio", "virtio_blk", "ext4", "crc32c_generic"],
}
WHEEL_PLATFORM = {"amd64": "x86_64", "arm64": "aarch64"}
GUEST_PYTHON = "3.11"  # bookworm's python3

# Boot settings baked into the disk (files relative to /).
GUEST_FILES = {
    "etc/fstab": "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n",
    "etc/hostname": "bangtin-board\n",
    "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 bangtin-board\n",
    "etc/systemd/network/10-eth0.network": "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n",
    # The board's package sources are local: the guest has no network but the test's own servers.
    "etc/apt/sources.list": "deb [trusted=yes] file:/srv/debs ./\n",
    "etc/pip.conf": "[global]\nno-index = true\nfind-links = /srv/wheels\ndisable-pip-version-check = true\n",
    "etc/modules-load.d/systemtest.conf": "virtio_console\n",
    # Agent logs reach the serial console as they happen: the host keeps them across power cuts.
    "etc/systemd/journald.conf.d/systemtest.conf": "[Journal]\nForwardToConsole=yes\nMaxLevelConsole=info\n"
                                                   "TTYPath=/dev/console\n",
    "etc/systemd/system/systemtest-guestd.service": """[Unit]
Description=system test guest agent (virtio-serial)
DefaultDependencies=no
After=systemd-udevd.service systemd-modules-load.service local-fs.target
Wants=systemd-modules-load.service

[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/systemtest/guestd.py
Restart=always
RestartSec=1

[Install]
WantedBy=sysinit.target
""",
}
ENABLE = {  # symlinks systemctl enable would make (no chroot needed for these)
    "etc/systemd/system/sysinit.target.wants/systemtest-guestd.service": "/etc/systemd/system/systemtest-guestd.service",
    "etc/systemd/system/multi-user.target.wants/systemd-networkd.service": "/lib/systemd/system/systemd-networkd.service",
    "etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service":
        "/lib/systemd/system/systemd-networkd-wait-online.service",
    "etc/systemd/system/sockets.target.wants/systemd-networkd.socket": "/lib/systemd/system/systemd-networkd.socket",
    # The serial getty hangs up ttyS0, which the journal and the kernel write to.
    "etc/systemd/system/serial-getty@ttyS0.service": "/dev/null",
    "etc/systemd/system/serial-getty@ttyAMA0.service": "/dev/null",
}


@dataclass(frozen=True)
class Image:
    arch: str
    disk: Path  # raw ext4, read-only base for overlays
    kernel: Path
    initrd: Path
    key: str
    built_s: float  # 0.0 when it came from the cache
    layers_built: tuple[str, ...]
    # A shared flock on the disk's `.inuse` file, held while this process lives: no prune takes it away.
    in_use: IO[bytes] | None = field(default=None, compare=False, repr=False)


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bangtin-systemtest"


def _hash(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode() if not isinstance(part, bytes) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def installer_packages(install_sh: Path) -> list[str]:
    """The Debian packages scripts/install.sh installs (its PACKAGES array and what it appends)."""
    text = install_sh.read_text()
    found: list[str] = []
    for match in re.finditer(r"PACKAGES\+?=\(([^)]*)\)", text):
        found.extend(word for word in match.group(1).split() if re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", word))
    if not found:
        raise StepFailed("image: read install.sh", f"no PACKAGES=(...) list found in {install_sh}")
    return sorted(set(found))


def _hooks(arch: str, repo_packages: list[str]) -> list[str]:
    modules = "\\n".join(INITRD_MODULES[arch])
    return [
        # The offline repository: exactly what apt on a board would fetch for install.sh (with Recommends).
        'chroot "$1" apt-get clean',
        'chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install --download-only -y -q '
        f'-o APT::Install-Recommends=true {" ".join(repo_packages)} >/dev/null',
        'mkdir -p "$1/srv/debs" && mv "$1"/var/cache/apt/archives/*.deb "$1/srv/debs/"',
        # A small initrd that mounts a virtio ext4 root and keeps fsck (GUIDE: booting a board under test).
        'printf "MODULES=list\\nFSTYPE=ext4\\nCOMPRESS=gzip\\n" > "$1/etc/initramfs-tools/conf.d/systemtest"',
        f'printf "{modules}\\n" >> "$1/etc/initramfs-tools/modules"',
        'chroot "$1" update-initramfs -u -k all >/dev/null',
    ]


def _write_packages_index(debs: Path) -> None:
    """Packages for `deb [trusted=yes] file:/srv/debs ./` from each .deb's control (dpkg-deb, no apt-utils)."""
    entries = []
    for deb in sorted(debs.glob("*.deb")):
        control = subprocess.run(["dpkg-deb", "--field", str(deb)], capture_output=True, text=True, check=True).stdout
        data = deb.read_bytes()
        entries.append(control.rstrip("\n") + f"\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    (debs / "Packages").write_text("\n".join(entries))


def install_requires() -> list[str]:
    """The agent's own dependencies (setup.cfg), comments left out."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return [line.strip() for line in parser["options"]["install_requires"].splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _runtime_requirements() -> list[str]:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    return [*install_requires(), *build, "pip"]


def download_wheels(arch: str, target: Path, python: str, requirements: list[str] | None = None) -> None:
    """The project's dependencies (and its build backend, unless `requirements` says otherwise) as
    wheels for the guest's Python and platform."""
    machine = WHEEL_PLATFORM[arch]
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(36, 16, -1)] + [f"manylinux2014_{machine}"]
    command = [python, "-m", "pip", "download", "-q", "-d", str(target), "--only-binary=:all:",
               "--python-version", GUEST_PYTHON, "--implementation", "cp", "--abi", "cp311", "--abi", "abi3",
               "--abi", "none", "-c", str(ROOT / "constraints.txt")]
    for platform in platforms:
        command += ["--platform", platform]
    done = subprocess.run([*command, *(requirements or _runtime_requirements())], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise StepFailed("image: download wheels", done.stderr.strip()[-2000:])


def _rootfs(arch: str, cache: Path) -> tuple[Path, str, bool]:
    repo_packages = sorted(set(installer_packages(ROOT / "scripts" / "install.sh")) | set(REPO_EXTRA))
    packages = [*STOCK_PACKAGES, KERNEL[arch]]
    hooks = _hooks(arch, repo_packages)
    key = _hash(FORMAT, SUITE, arch, packages, repo_packages, hooks)
    tar = cache / f"rootfs-{arch}-{key}.tar"
    if tar.exists():
        return tar, key, False
    log(f"building the {arch} rootfs with mmdebstrap (cache miss: {tar.name})")
    partial = tar.with_name(tar.stem + ".partial.tar")
    command = ["mmdebstrap", "--mode=root", "--format=tar", "--variant=minbase", f"--architectures={arch}",
               f"--include={','.join(packages)}", "--aptopt=Acquire::Retries \"3\""]
    for hook in hooks:
        command.append(f"--customize-hook={hook}")
    command += [SUITE, str(partial)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise StepFailed("image: mmdebstrap", (done.stderr or done.stdout).strip()[-3000:])
    partial.rename(tar)
    return tar, key, True


def build(arch: str, python: str) -> Image:
    """The cached image for `arch`, building the layers whose inputs changed."""
    started = time.monotonic()
    cache = cache_root() / arch
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".build.lock", "ab") as build_lock:
        fcntl.flock(build_lock, fcntl.LOCK_EX)  # another run building now: wait, then find its layers cached
        return _build_locked(arch, python, cache, started)


def _build_locked(arch: str, python: str, cache: Path, started: float) -> Image:
    tar, rootfs_key, rootfs_built = _rootfs(arch, cache)
    guestd = (Path(__file__).parent / "guestd.py").read_bytes()
    key = _hash(FORMAT, rootfs_key, (ROOT / "constraints.txt").read_bytes(), (ROOT / "setup.cfg").read_bytes(),
                (ROOT / "pyproject.toml").read_bytes(), guestd, GUEST_FILES, ENABLE, DISK_SIZE)
    disk = cache / f"disk-{arch}-{key}.raw"
    kernel, initrd = disk.with_suffix(".vmlinuz"), disk.with_suffix(".initrd")
    layers: tuple[str, ...] = ("rootfs",) if rootfs_built else ()
    if not (disk.exists() and kernel.exists() and initrd.exists()):
        log(f"making the {arch} disk (cache miss: {disk.name})")
        with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as work:
            tree = Path(work) / "root"
            tree.mkdir()
            with tarfile.open(tar) as archive:
                archive.extractall(tree, filter="fully_trusted")
            _write_packages_index(tree / "srv" / "debs")
            download_wheels(arch, tree / "srv" / "wheels", python)
            (tree / "usr/local/lib/systemtest").mkdir(parents=True, exist_ok=True)
            (tree / "usr/local/lib/systemtest/guestd.py").write_bytes(guestd)
            for relative, text in GUEST_FILES.items():
                path = tree / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            for relative, target in ENABLE.items():
                path = tree / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.unlink(missing_ok=True)
                path.symlink_to(target)
            (tree / "etc/machine-id").write_text("")  # first boot makes one, as on a fresh board
            boot = tree / "boot"
            kernels = sorted(boot.glob("vmlinuz-*"))
            initrds = sorted(boot.glob("initrd.img-*"))
            if not kernels or not initrds:
                raise StepFailed("image: kernel", f"no vmlinuz/initrd in the rootfs /boot: {os.listdir(boot)}")
            partial = disk.with_suffix(".partial")
            done = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "bangtin-root", "-d", str(tree), str(partial), DISK_SIZE],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise StepFailed("image: mkfs.ext4 -d", done.stderr.strip())
            shutil.copyfile(kernels[-1], kernel)
            shutil.copyfile(initrds[-1], initrd)
            partial.rename(disk)
        layers += ("disk",)
    in_use = open(disk.with_suffix(".inuse"), "ab")  # noqa: SIM115 — held until this process ends
    fcntl.flock(in_use, fcntl.LOCK_SH)
    if layers:
        _prune(cache, keep={tar.name, disk.name, kernel.name, initrd.name})
    return Image(arch, disk, kernel, initrd, key, time.monotonic() - started if layers else 0.0, layers, in_use)


def _prune(cache: Path, keep: set[str]) -> None:
    """Old layers of this arch go (one image per arch is kept), except a disk another run still boots
    from: its `.inuse` lock is held, so it stays until a later build finds it free."""
    for raw in cache.glob("disk-*.raw"):
        if raw.name in keep:
            continue
        with open(raw.with_suffix(".inuse"), "ab") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"keeping {raw.name}: another run uses it")
                continue
            for suffix in (".raw", ".vmlinuz", ".initrd", ".inuse"):
                raw.with_suffix(suffix).unlink(missing_ok=True)
    for tar in cache.glob("rootfs-*.tar"):  # only read inside a build, and builds take turns
        if tar.name not in keep:
            tar.unlink()
