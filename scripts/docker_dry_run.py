#!/usr/bin/env python3
"""Replay the Dockerfile without Docker: the closest honest check where no Docker engine runs.

    sudo python3 scripts/docker_dry_run.py [--build-arg K=V ...] [--python python3] [--keep]

What it does, instruction by instruction, in a fresh temp folder T (the image's filesystem for the paths
the Dockerfile creates: every `/home/...` path becomes `T/home/...`):
- FROM: a copy of this machine's Python (`--python`; its standard library and pip only, no other
  packages) in `T/usr/local`, first on PATH, standing in for the base image's Python.
- ARG: the defaults, or `--build-arg` (TORCH_INDEX is unreachable here: pass PyPI's index and pip finds
  the CPU wheel through this machine's pip configuration).
- RUN as root before USER; `apt-get install P...` is not replayed: each package must be installed on this
  machine (dpkg), as it will be in the image; `useradd -u N` makes the image's user uid N (an existing account with that
  uid is used as is; else one is created and removed at the end), `-m` its home in T.
- USER: every later RUN, the CMD and the HEALTHCHECK run as that uid (setpriv), never as root.
- ENV: set for what follows, `$VAR` expanded as Docker does. WORKDIR: created root-owned when missing,
  as the classic builder and kaniko do (BuildKit would give it to USER: a Dockerfile must not rely on either).
- COPY: the build context (this repository's working tree) filtered by .dockerignore; `--chown` honoured.
- Then, in a network namespace of its own (a container's: nothing but its loopback), the CMD is
  started; the EXPOSEd ports must answer HTTP, the HEALTHCHECK command must exit 0, and HOME, the
  WORKDIR, and every folder an ENV names under HOME must be writable by the user.
Not replayed: the base image itself (Debian slim and its Python build), Docker's layer cache and
isolation, a registry pull. Exit 0 when every check passes; the report is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# --- reading the Dockerfile --------------------------------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, backslash continuations joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        if pending and line.lstrip().startswith("#"):
            continue                                  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def expand(value: str, env: dict[str, str]) -> str:
    """Docker's substitution in ENV, WORKDIR, COPY, USER: $NAME and ${NAME}."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def env_pairs(args: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """ENV K=V K2="V 2" (or the old `ENV K V`), each value expanded with the environment before it."""
    words = shlex.split(args, posix=True)
    if words and "=" not in words[0]:
        return [(words[0], expand(" ".join(words[1:]), env))]
    # every value is expanded against the environment before this line, as Docker does
    return [(name, expand(value, env)) for name, _, value in (word.partition("=") for word in words)]


def command(args: str) -> list[str]:
    """CMD / HEALTHCHECK CMD / RUN: the exec form (a JSON list) as is, the shell form through /bin/sh -c."""
    if args.startswith("["):
        return json.loads(args)
    return ["/bin/sh", "-c", args]


def healthcheck(args: str) -> tuple[dict[str, str], list[str]]:
    options, words = {}, args.split()
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        options[name] = value
    assert words and words[0].upper() == "CMD", f"HEALTHCHECK without CMD: {args}"
    return options, command(args.split("CMD", 1)[1].strip())


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    assert match, f"a duration Docker reads: {value}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def ignored(context: Path) -> callable:
    """.dockerignore as Docker reads it (patterns from the context root, ** any depth, ! re-includes)."""
    path = context / ".dockerignore"
    rules = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        line = line.strip()
        if line and not line.startswith("#"):
            keep = line.startswith("!")
            rules.append((keep, line.lstrip("!").strip("/")))

    def matches(pattern: str, rel: str) -> bool:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        parts = rel.split("/")
        return any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1))

    def is_ignored(rel: str) -> bool:
        verdict = False
        for keep, pattern in rules:
            if matches(pattern, rel):
                verdict = not keep
        return verdict

    return is_ignored


# --- replaying it ----------------------------------------------------------------------------------

class Replay:
    def __init__(self, dockerfile: Path, context: Path, build_args: dict[str, str], python: str, temp: Path):
        self.steps = instructions(dockerfile.read_text())
        self.context, self.build_args, self.python, self.t = context, build_args, python, temp
        self.env = {"PATH": f"{temp}/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "LANG": "C.UTF-8", "HOME": "/root", "TMPDIR": f"{temp}/tmp"}
        # this machine's package registries, as pip is configured here (the image would reach PyPI directly)
        self.env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
        self.args: dict[str, str] = {}
        self.users: dict[str, int] = {"root": 0}
        self.uid = 0
        self.workdir = Path("/")
        self.created_user: str | None = None
        self.report: dict = {"temp": str(temp), "steps": [], "checks": {}}
        self.expose: list[int] = []
        self.health: tuple[dict, list[str]] | None = None
        self.cmd: list[str] | None = None

    def remap(self, text: str) -> str:
        """An image path under /home lives in the temp folder."""
        return re.sub(r"(?<![\w.~/-])/home/", f"{self.t}/home/", text)

    def log(self, what: str, **detail):
        self.report["steps"].append({"step": what, **detail})
        print(f"[dry-run] {what} {json.dumps(detail) if detail else ''}", file=sys.stderr, flush=True)

    def as_user(self, uid: int) -> list[str]:
        if uid == 0:
            return []
        gid = pwd.getpwuid(uid).pw_gid
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]

    def base_python(self):
        """FROM: the interpreter's installation without its packages, pip added from its own ensurepip."""
        info = json.loads(subprocess.check_output([self.python, "-c", "import json, sys; print(json.dumps("
                                                   "[sys.base_prefix, '%d.%d' % sys.version_info[:2], sys.version]))"]))
        prefix, short, version = info
        dest = self.t / "usr/local"
        skip = {f"lib/python{short}/site-packages", f"lib/python{short}/test"}
        shutil.copytree(prefix, dest, symlinks=True,
                        ignore=lambda folder, names: [n for n in names
                                                      if os.path.relpath(Path(folder) / n, prefix) in skip])
        (dest / f"lib/python{short}/site-packages").mkdir()
        self.env["LD_LIBRARY_PATH"] = str(dest / "lib")     # its libpython, wherever the build's RUNPATH says
        if not (dest / "bin/python").exists():
            (dest / "bin/python").symlink_to(f"python{short}")
        self.run_shell(f"python -m ensurepip --default-pip > /dev/null && ln -sf pip{short} {dest}/bin/pip", uid=0)
        self.log("FROM", python=version.split()[0], copied_from=prefix, note="stdlib + pip only")

    def run_shell(self, script: str, uid: int | None = None, env: dict | None = None, timeout: float = 3600):
        uid = self.uid if uid is None else uid
        full_env = {**self.env, **self.args, **(env or {})}
        started = time.time()
        done = subprocess.run([*self.as_user(uid), "/bin/sh", "-c", script], env=full_env, cwd=self.workdir,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise SystemExit(f"RUN failed (exit {done.returncode}, uid {uid}): {script}\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return time.time() - started

    def apt(self, packages: list[str]):
        """An `apt-get install` is not replayed (it would change this machine's own packages): each package
        must already be installed here, as the image will have it."""
        missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode]
        if missing:
            raise SystemExit(f"apt-get install: not replayed, and not installed on this machine: {' '.join(missing)}")
        self.log("RUN apt-get", packages=packages, note="not replayed: installed on this machine")

    def useradd(self, words: list[str]):
        """`useradd [-m] -u N name`: the image's user is uid N; its home is made in the temp folder."""
        uid = int(words[words.index("-u") + 1])
        name = words[-1]
        try:
            existing = pwd.getpwuid(uid).pw_name
        except KeyError:
            existing = None
            self.created_user = f"dryrun{uid}"
            subprocess.run(["useradd", "-M", "-u", str(uid), "-d", f"{self.t}/home/{name}", "-s", "/usr/sbin/nologin",
                            self.created_user], check=True)
        self.users[name] = uid
        if "-m" in words:
            home = self.t / "home" / name
            home.mkdir(parents=True)
            os.chown(home, uid, pwd.getpwuid(uid).pw_gid)
        self.log("RUN useradd", uid=uid, name=name, host_account=existing or self.created_user)

    def copy(self, args: str):
        words = shlex.split(args)
        owner = None
        while words[0].startswith("--"):
            option, _, value = words.pop(0)[2:].partition("=")
            if option == "chown":
                owner = self.users[value.split(":")[0]] if not value.split(":")[0].isdigit() else int(value.split(":")[0])
        *sources, dest = [self.remap(expand(w, self.env)) for w in words]
        dest_path = Path(dest) if dest.startswith("/") else self.workdir / dest
        is_ignored = ignored(self.context)
        files = bytes_ = 0
        for source in sources:
            base = (self.context / source).resolve()
            for path in ([base] if base.is_file() else self.walk(base, is_ignored)):
                rel = path.relative_to(self.context).as_posix()
                if is_ignored(rel):
                    continue
                target = dest_path / (path.name if base.is_file() else path.relative_to(base))
                if base.is_file() and not dest.endswith("/") and not dest_path.is_dir():
                    target = dest_path
                if path.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
                    files += 1
                    bytes_ += path.stat().st_size
                if owner is not None:
                    os.chown(target, owner, pwd.getpwuid(owner).pw_gid)
        self.log("COPY", sources=sources, dest=str(dest_path), files=files, mb=round(bytes_ / 1e6, 1), owner=owner)

    def walk(self, base: Path, is_ignored) -> list[Path]:
        """Every path under base that .dockerignore keeps; an ignored folder is not entered (the 2 GB venv)."""
        found = []
        for folder, dirs, names in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not is_ignored((Path(folder) / d).relative_to(self.context).as_posix()))
            found += [Path(folder) / d for d in dirs] + [Path(folder) / n for n in sorted(names)]
        return found

    def build(self):
        for word, args in self.steps:
            if word == "FROM":
                self.base_python()
            elif word == "ARG":
                name, _, default = args.partition("=")
                self.args[name] = self.build_args.get(name, default)
                self.log("ARG", **{name: self.args[name]})
            elif word == "USER":
                name = expand(args, self.env).split(":")[0]
                self.uid = int(name) if name.isdigit() else self.users[name]
                self.log("USER", name=name, uid=self.uid)
            elif word == "ENV":
                pairs = env_pairs(args, {**self.args, **self.env})
                for name, value in pairs:
                    self.env[name] = self.remap(value)
                self.log("ENV", **{name: self.env[name] for name, _ in pairs})
            elif word == "WORKDIR":
                path = Path(self.remap(expand(args, self.env)))
                path = path if path.is_absolute() else self.workdir / path
                if not path.exists():
                    path.mkdir(parents=True)                       # root-owned: see the module's docstring
                self.workdir = path
                self.log("WORKDIR", path=str(path), owner_uid=path.stat().st_uid)
            elif word == "RUN":
                words = shlex.split(args) if not args.startswith("[") else json.loads(args)
                if words and words[0] == "useradd":
                    self.useradd(words)
                    continue
                packages = apt_packages(args)
                if packages:
                    self.apt(packages)
                    continue
                took = self.run_shell(self.remap(args))
                self.log("RUN", command=args[:120], uid=self.uid, seconds=round(took, 1))
            elif word == "COPY":
                self.copy(args)
            elif word == "EXPOSE":
                self.expose += [int(p.split("/")[0]) for p in args.split()]
                self.log("EXPOSE", ports=self.expose)
            elif word == "HEALTHCHECK":
                self.health = healthcheck(args)
                self.log("HEALTHCHECK", options=self.health[0])
            elif word == "CMD":
                self.cmd = command(args)
                self.log("CMD", command=self.cmd)
            else:
                raise SystemExit(f"the dry run does not know {word}: teach it before relying on it")

    def writable_folders(self) -> list[str]:
        """HOME, the WORKDIR, and every ENV value under HOME (a file's folder where it names a file)."""
        home = self.env["HOME"]
        folders = {home, str(self.workdir)}
        for name, value in self.env.items():
            for part in value.split(":"):
                if name != "PATH" and part.startswith(home + "/"):
                    folders.add(part if not Path(part).suffix else str(Path(part).parent))
        return sorted(folders)


def apt_packages(script: str) -> list[str]:
    """The packages a RUN's `apt-get install` names ([] when it installs none)."""
    packages, installing, previous = [], False, ""
    for word in shlex.split(script):
        if word in ("&&", ";", "||"):
            installing = False
        elif installing and not word.startswith("-"):
            packages.append(word)
        elif word == "install" and previous in ("apt-get", "apt"):
            installing = True
        elif previous in ("apt-get", "apt") and word.startswith("-"):
            word = previous                          # options before the verb: `apt-get -y install`
        previous = word
    return packages


def serve_and_check(state: dict) -> dict:
    """Inside a fresh network namespace: start the CMD as the image's user, wait for the ports, run the
    HEALTHCHECK, check the folders, stop it."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env, cwd, user = state["env"], state["workdir"], state["as_user"]
    checks = {}
    for folder in state["folders"]:
        ok = subprocess.run([*user, "/bin/sh", "-c", 'mkdir -p "$1" && test -w "$1"', "_", folder], env=env).returncode == 0
        checks[f"writable by uid {state['uid']}: {folder}"] = ok
    log = open(state["log"], "w")
    started = time.time()
    process = subprocess.Popen([*user, *state["cmd"]], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = started + state["start_timeout"]
    answered = {}
    try:
        for port in state["ports"]:
            while time.time() < deadline and process.poll() is None:
                try:
                    status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                except OSError:
                    time.sleep(2)
                    continue
                answered[port] = status
                break
            checks[f"port {port} answers HTTP (GET / -> {answered.get(port)})"] = answered.get(port) == 200
        checks["serving after (s)"] = round(time.time() - started, 1)
        options, health = state["health"]
        timeout = seconds(options.get("timeout", "30s"))
        try:
            rc = subprocess.run([*user, *health], env=env, cwd=cwd, timeout=timeout + 5).returncode
        except subprocess.TimeoutExpired:
            rc = "timed out"
        checks[f"HEALTHCHECK exits 0 (got {rc})"] = rc == 0
        owners = {p: os.stat(p).st_uid for p in state["folders"] if os.path.exists(p)}
        home = Path(env["HOME"])
        written = sorted({f for f in home.rglob("*") if f.is_file() and f.stat().st_mtime >= started})
        checks["files the server wrote are the user's"] = all(f.stat().st_uid == state["uid"] for f in written)
        # what a start costs on disk: a build-time step (a converted model) redone here would show up
        checks["written under HOME while starting"] = [str(f.relative_to(home)) for f in written
                                                       if f.suffix != ".pyc"][:20]
        checks["folder owners"] = owners
        checks["still running"] = process.poll() is None
        log.flush()
        # a container's log is its output: block-buffered stdout would show nothing until the process ends
        checks["the server's output reached its log while serving"] = os.path.getsize(state["log"]) > 0
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    parser.add_argument("--python", default="python3", help="the interpreter standing in for the base image's")
    parser.add_argument("--dockerfile", default=str(ROOT / "Dockerfile"))
    parser.add_argument("--context", default=str(ROOT))
    parser.add_argument("--start-timeout", type=float, default=900, help="seconds for the CMD to answer")
    parser.add_argument("--keep", action="store_true", help="leave the temp folder for a look")
    parser.add_argument("--_serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._serve:
        state = json.loads(Path(args._serve).read_text())
        Path(state["result"]).write_text(json.dumps(serve_and_check(state)))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("run as root: it switches to the image's uid (setpriv), chowns, and makes a network namespace")
    temp = Path(tempfile.mkdtemp(prefix="docker-dry-run-"))
    temp.chmod(0o755)
    (temp / "tmp").mkdir(mode=0o1777)
    (temp / "tmp").chmod(0o1777)                      # a container's own /tmp (gradio's uploads folder lives there)
    replay = Replay(Path(args.dockerfile), Path(args.context).resolve(),
                    dict(a.split("=", 1) for a in args.build_arg), args.python, temp)
    try:
        started = time.time()
        replay.build()
        replay.report["build_seconds"] = round(time.time() - started, 1)
        assert replay.cmd and replay.expose and replay.health, "CMD, EXPOSE and HEALTHCHECK are all needed"
        state = {"env": {**replay.env}, "workdir": str(replay.workdir), "as_user": replay.as_user(replay.uid),
                 "uid": replay.uid, "cmd": replay.cmd, "ports": replay.expose, "health": replay.health,
                 "folders": replay.writable_folders(), "start_timeout": args.start_timeout,
                 "log": str(temp / "cmd.log"), "result": str(temp / "result.json")}
        (temp / "state.json").write_text(json.dumps(state))
        subprocess.run(["unshare", "--net", "--", sys.executable, __file__, "--_serve", str(temp / "state.json")],
                       check=True)
        checks = json.loads((temp / "result.json").read_text())
        replay.report["checks"] = checks
        replay.report["cmd_log_tail"] = (temp / "cmd.log").read_text()[-2500:]
        failed = [k for k, v in checks.items() if v is False]
        replay.report["failed"] = failed
        print(json.dumps(replay.report, indent=1))
        return 1 if failed else 0
    finally:
        if replay.created_user:
            subprocess.run(["userdel", replay.created_user], check=False)
        if not args.keep:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
