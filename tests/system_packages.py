"""Debian packages a test needs (SLURM, Chromium): installed only when asked.

`make test` installs system-wide packages only with IISAN_INSTALL_SYSTEM_PACKAGES=1 (CI's
.ci/run sets it), as root or with password-less sudo; otherwise a test whose programs are
missing is skipped, saying how to enable it.
"""
import os
import shutil
import subprocess
from pathlib import Path

OPT_IN = "IISAN_INSTALL_SYSTEM_PACKAGES"


def install(packages: list[str], present, policy_rc: bool = False, recommends: bool = True) -> str | None:
    """Install `packages` with apt-get unless present() already holds; None when the programs are
    there afterwards, else the reason to skip. policy_rc keeps the packages' own services from
    starting (a test that starts private daemons would have no way to stop them)."""
    if present():
        return None
    what = ", ".join(packages)
    if os.environ.get(OPT_IN) != "1":
        return f"{what} not installed: install them, or set {OPT_IN}=1 to let the tests apt-get install them"
    if not shutil.which("apt-get"):
        return f"{what} not installed and there is no apt-get to install them"
    as_root = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if as_root and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode:
        return f"{what} not installed, and installing them needs root (or sudo without a password)"
    policy = Path("/usr/sbin/policy-rc.d")
    added = policy_rc and not policy.exists()
    if added:
        subprocess.run(as_root + ["sh", "-c", f"printf '#!/bin/sh\\nexit 101\\n' > {policy} && chmod 755 {policy}"],
                       check=True)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    command = as_root + ["apt-get", "install", "-y", *([] if recommends else ["--no-install-recommends"]), *packages]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode:  # a fresh machine may have no package lists yet
            subprocess.run(as_root + ["apt-get", "update"], capture_output=True, env=env, timeout=600)
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    finally:
        if added:
            subprocess.run(as_root + ["rm", "-f", str(policy)])
    if done.returncode:
        return f"apt-get could not install {what}: {done.stderr[-500:]}"
    return None if present() else f"{what} installed, but the programs the test needs are still missing"
