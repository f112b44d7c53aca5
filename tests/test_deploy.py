"""The Dockerfile read the way scripts/docker_dry_run.py replays it (no Docker engine here): who runs the
server, on which port, what the health check asks, what every ENV means, what the build context holds.
The replay itself (a fresh Python, the RUN steps, the server started as uid 1000 in its own network
namespace) installs packages for minutes, so it is a script the README names, not part of this suite."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("docker_dry_run", ROOT / "scripts" / "docker_dry_run.py")
dry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dry)

STEPS = dry.instructions((ROOT / "Dockerfile").read_text())


def image_env() -> dict[str, str]:
    env: dict[str, str] = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    for word, args in STEPS:
        if word == "ENV":
            env.update(dry.env_pairs(args, env))
    return env


def test_the_parser_reads_continuations_comments_and_both_env_forms():
    steps = dry.instructions('FROM x\n# a comment\nENV A=1 \\\n    # inside\n    B="two words" C=$A\nENV D 4\n'
                             'CMD ["python", "app.py"]\n')
    assert [w for w, _ in steps] == ["FROM", "ENV", "ENV", "CMD"]
    env = {"A": "0"}
    assert dry.env_pairs(steps[1][1], env) == [("A", "1"), ("B", "two words"), ("C", "0")]   # Docker: the old A
    assert dry.env_pairs(steps[2][1], env) == [("D", "4")]
    assert dry.command(steps[3][1]) == ["python", "app.py"]
    assert dry.command("python -c 'x'") == ["/bin/sh", "-c", "python -c 'x'"]


def test_the_server_runs_as_uid_1000_never_root():
    users, current = {}, "root"
    for word, args in STEPS:
        if word == "RUN" and args.startswith("useradd"):
            words = shlex.split(args)
            users[words[-1]] = int(words[words.index("-u") + 1])
        if word == "USER":
            current = args
    assert users.get(current) == 1000
    copies = [args for word, args in STEPS if word == "COPY"]
    assert copies and all(f"--chown={current}" in c for c in copies)     # the app's files are the user's


def test_port_7860_health_check_and_command():
    from playground.server import HEALTH_PATH

    env = image_env()
    ports = [args for word, args in STEPS if word == "EXPOSE"]
    assert ports == ["7860"] and env["PLAYGROUND_PORT"] == "7860" and env["PLAYGROUND_HOST"] == "0.0.0.0"
    (options, health), = [dry.healthcheck(args) for word, args in STEPS if word == "HEALTHCHECK"]
    assert f"http://127.0.0.1:7860{HEALTH_PATH}" in " ".join(health)
    # the probe's own timeout must be shorter than Docker's, or Docker kills it first and says "unhealthy"
    probe_timeout = float(re.search(r"timeout=(\d+(?:\.\d+)?)\)", " ".join(health)).group(1))
    assert probe_timeout < dry.seconds(options["timeout"])
    # the model loads and is timed before the server answers: the start period must cover a cold start
    # (287 s in scripts/docker_dry_run.py's replay on a 2-core machine at load 9.5)
    assert dry.seconds(options["start-period"]) >= 300
    cmd, = [dry.command(args) for word, args in STEPS if word == "CMD"]
    assert cmd == ["python", "app.py"] and (ROOT / "app.py").exists()


def test_every_env_the_image_sets_is_a_documented_setting():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Limits")]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)", table))
    names = {name for word, args in STEPS if word == "ENV" for name, _ in dry.env_pairs(args, {})}
    assert names - {"HOME", "PATH"} <= documented, (names - {"HOME", "PATH"}) - documented


def test_the_folders_the_server_writes_are_under_the_users_home():
    env = image_env()
    home = env["HOME"]
    assert home == "/home/user"
    for name in ("PLAYGROUND_CACHE_DIR", "HF_HOME", "PLAYGROUND_DB"):
        assert env[name].startswith(home + "/"), name
    # made by the user (a RUN after USER), not by WORKDIR: a WORKDIR the builder creates may be root's
    made = " ".join(args for word, args in STEPS if word == "RUN" and args.startswith("mkdir"))
    for folder in (env["PLAYGROUND_CACHE_DIR"], str(Path(env["PLAYGROUND_DB"]).parent),
                   *(args for word, args in STEPS if word == "WORKDIR")):
        assert folder in made.split(), folder
    user_at = next(i for i, (word, _) in enumerate(STEPS) if word == "USER")
    mkdir_at = next(i for i, (word, args) in enumerate(STEPS) if word == "RUN" and args.startswith("mkdir"))
    assert mkdir_at > user_at


def test_the_build_context_leaves_out_the_venv_git_and_databases():
    is_ignored = dry.ignored(ROOT)
    for path in (".venv/lib/x.py", ".git/HEAD", "runs.sqlite3", "data/runs.sqlite3-wal", "playground/__pycache__/a.pyc",
                 ".pytest_cache/v", "artifacts/x"):
        assert is_ignored(path), path
    for path in ("app.py", "playground/server.py", "storage/migrations/env.py", "requirements.txt", "Dockerfile"):
        assert not is_ignored(path), path


def test_a_cpp_compiler_is_installed_as_root_and_the_step_compiled_at_build():
    """torch.compile needs a C++ compiler for the decode step (playground/compiled_step.py); the slim base has none."""
    assert dry.apt_packages("apt-get update && apt-get install -y --no-install-recommends g++ make && rm -rf x") == \
        ["g++", "make"]
    assert dry.apt_packages("apt-get -y install g++") == ["g++"]
    assert dry.apt_packages("pip install torch && apt-get update") == []
    user_at = next(i for i, (word, _) in enumerate(STEPS) if word == "USER")
    installs = [i for i, (word, args) in enumerate(STEPS) if word == "RUN" and "g++" in dry.apt_packages(args)]
    assert installs and installs[0] < user_at                           # apt-get runs as root
    compiles = [i for i, (word, args) in enumerate(STEPS) if word == "RUN" and "compiled_step.prepare" in args]
    copied = max(i for i, (word, _) in enumerate(STEPS) if word == "COPY")
    assert compiles and compiles[0] > copied                            # after the code is in the image
