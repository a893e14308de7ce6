#!/usr/bin/env python3
"""The docs test: runs the shell blocks of the docs as a user would.

    scripts/docs-test.py [--setup] [--bin-dir DIR] [FILE.md ...]

Default files: README.md, docs/*.md, plugins/sdk/README.md. Each file's
blocks run in order, in a scratch directory of its own, as one user at one
terminal: exported variables and the working directory carry over from one
block to the next. The scratch directory links `target` and `scripts` to the
repository, so the docs' relative paths (`target/wasm32-wasip2/plugin/…`,
`scripts/start-broker.sh`) work; the binaries are those already built (DIR,
default target/debug, first on PATH), and tansu's directory is on PATH. At
the end of each file every process its blocks started is stopped (SIGTERM,
then SIGKILL).

How a fenced block is marked (its info string, `LANG,FLAG,...`):

  sh,run          run it: a non-zero exit fails the test (`set -eo pipefail`;
                  a command ending in `&` keeps running in the background)
  sh,setup        builds what the runner is handed already built: run, in the
                  repository itself, only with --setup (a fresh clone)
  sh,skip         not run; its first line says why: `# not run: REASON`
                  (not `norun`: rustdoc takes that for a misspelt `no_run`
                  in the SDK's README, which is its crate doc)
  LANG,file=NAME  not run: written to NAME in the scratch directory (e.g. the
                  config file a later block uses)
  text,expect     expected output of the nearest run block above it: every
                  non-blank line must match a whole line of that block's output
                  (stdout and stderr, leading and trailing blanks ignored;
                  `...` matches anything, a run of blanks any run of blanks)

Flags of a run block: `wait=S` (after it exits, give processes it started in
the background S seconds to print the expected lines), `retry=S` (run it
again until it exits 0 with the expected lines, for up to S seconds),
`timeout=S` (default 120; 3600 for a setup block, a first build).

Every `sh`/`bash`/`console`/`shell` block must be `run`, `setup` or `skip`:
an unmarked one fails the test, so no shell block goes stale unseen.
"""

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

SHELLS = {"sh", "bash", "console", "shell"}
RUN_FLAGS = {"run", "setup", "skip", "expect"}
VALUE_FLAGS = {"wait", "retry", "timeout", "file"}
DEFAULT_TIMEOUT_S = 120
SETUP_TIMEOUT_S = 3600
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})\s*(.*)$")


class DocsError(Exception):
    """A failure, named by file and line."""


@dataclass
class Block:
    path: str
    line: int  # 1-based line of the opening fence
    lang: str
    flags: set
    values: dict
    text: str
    expect: list = field(default_factory=list)

    def where(self):
        return f"{os.path.relpath(self.path, REPO)}:{self.line} ({self.lang},{','.join(sorted(self.flags))})"


def parse(path):
    """The fenced blocks of `path`, with expectations attached to their
    run blocks; raises DocsError for a shell block that is not marked."""
    lines = open(path, encoding="utf-8").read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match.groups()
        if fence[0] == "`" and "`" in info:  # inline code, not a fence (CommonMark)
            i += 1
            continue
        start, body, i = i + 1, [], i + 1
        while i < len(lines):
            close = lines[i].strip()
            if close.startswith(fence[0] * len(fence)) and not close.strip(fence[0]):
                break
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        blocks.append(block_of(path, start, info.strip(), "\n".join(body)))
    attach_expectations(blocks)
    return [b for b in blocks if b.flags & {"run", "setup", "skip"} or "file" in b.values]


def block_of(path, line, info, text):
    words = [w for w in re.split(r"[,\s]+", info) if w]
    lang, flags, values = (words[0].lower() if words else ""), set(), {}
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if eq and key in VALUE_FLAGS:
            values[key] = value
        elif word in RUN_FLAGS:
            flags.add(word)
        elif lang in SHELLS or "expect" in words:
            raise DocsError(f"{os.path.relpath(path, REPO)}:{line}: unknown flag {word!r} in ```{info}")
    block = Block(path, line, lang, flags, values, text)
    if lang in SHELLS and not flags & {"run", "setup", "skip"}:
        raise DocsError(
            f"{os.path.relpath(path, REPO)}:{line}: a ```{info or lang} block is neither run nor skip: "
            f"mark it ```{lang},run (the docs test runs it) or ```{lang},skip with `# not run: REASON` as its first line"
        )
    if "skip" in flags and not re.match(r"#\s*not run[^:\n]*:\s*\S", text.lstrip()):
        raise DocsError(f"{block.where()}: a skip block starts with `# not run: REASON`")
    if lang not in SHELLS and flags & {"run", "setup"}:
        raise DocsError(f"{block.where()}: only shell blocks run")
    for key in ("wait", "retry", "timeout"):
        if key in values and not values[key].isdigit():
            raise DocsError(f"{block.where()}: {key}= takes whole seconds, not {values[key]!r}")
    return block


def attach_expectations(blocks):
    last = None
    for block in blocks:
        if "expect" in block.flags:
            if last is None:
                raise DocsError(f"{block.where()}: an expect block with no run block above it")
            if last.expect:
                raise DocsError(f"{block.where()}: {last.where()} already has its expected output")
            last.expect = [l.strip() for l in block.text.split("\n") if l.strip()]
        elif block.flags & {"run", "setup", "skip"}:
            last = block if block.flags & {"run", "setup"} else None


def pattern(expected):
    parts = re.split(r"(\.\.\.|…|\s+)", expected)
    regex = "".join(".*" if p in ("...", "…") else r"\s+" if p.isspace() else re.escape(p) for p in parts)
    return re.compile(regex + r"\Z")


def missing(expect, output):
    lines = [l.strip() for l in output.split("\n")]
    return [e for e in expect if not any(pattern(e).match(l) for l in lines)]


class Session:
    """One file's scratch directory, environment and processes."""

    def __init__(self, bin_dir, setup):
        self.dir = tempfile.mkdtemp(prefix="logstream-docs-")
        for name in ("target", "scripts"):
            os.symlink(os.path.join(REPO, name), os.path.join(self.dir, name))
        self.setup = setup
        self.groups = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LOGSTREAM_")}
        tansu = os.environ.get("TANSU", os.path.expanduser("~/.cargo/bin/tansu"))
        self.env["PATH"] = os.pathsep.join([bin_dir, os.path.dirname(tansu), self.env.get("PATH", "")])
        self.env_file = os.path.join(self.dir, ".docs-test-env")
        self.cwd_file = os.path.join(self.dir, ".docs-test-cwd")
        with open(self.cwd_file, "w") as f:
            f.write(self.dir)
        self.count = 0

    def script(self, block):
        # A setup block runs in the repository and leaves the scratch
        # directory the current one.
        setup = "setup" in block.flags
        cwd = REPO if setup else f'"$(cat {self.cwd_file})"'
        save_cwd = "" if setup else f"; pwd > {self.cwd_file}"
        return "\n".join([
            f"cd {cwd}",
            f"[ -f {self.env_file} ] && source {self.env_file}",
            f"trap 'export -p > {self.env_file}{save_cwd}' EXIT",
            "set -eo pipefail",
            block.text,
            "",
        ])

    def run_once(self, block, log):
        default = SETUP_TIMEOUT_S if "setup" in block.flags else DEFAULT_TIMEOUT_S
        timeout = int(block.values.get("timeout", default))
        with open(log, "w") as out:
            child = subprocess.Popen(
                ["bash", "-c", self.script(block)], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )
            self.groups.append(child.pid)
            try:
                return child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(child.pid, signal.SIGKILL)
                child.wait()
                raise DocsError(f"{block.where()}: still running after {timeout} s (timeout=)\n{tail(log)}")

    def run(self, block):
        if "file" in block.values:
            with open(os.path.join(self.dir, block.values["file"]), "w") as f:
                f.write(block.text + "\n")
            return "written"
        if "skip" in block.flags or ("setup" in block.flags and not self.setup):
            return "skipped"
        self.count += 1
        log = os.path.join(self.dir, f".docs-test-block-{self.count}.log")
        retry_until = time.monotonic() + int(block.values.get("retry", 0))
        while True:
            status = self.run_once(block, log)
            wait_until = time.monotonic() + int(block.values.get("wait", 0))
            lacking = missing(block.expect, read(log))
            while status == 0 and lacking and time.monotonic() < wait_until:
                time.sleep(0.2)
                lacking = missing(block.expect, read(log))
            if (status == 0 and not lacking) or time.monotonic() >= retry_until:
                break
            time.sleep(0.5)
        if status != 0:
            raise DocsError(f"{block.where()}: exit status {status}\n{indent(block.text)}\n{tail(log)}")
        if lacking:
            lines = "\n".join(f"    {l}" for l in lacking)
            raise DocsError(f"{block.where()}: expected line(s) missing from its output:\n{lines}\n{tail(log)}")
        return "ran"

    def close(self):
        for pgid in reversed(self.groups):
            kill_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(group_alive(p) for p in self.groups):
            time.sleep(0.1)
        for pgid in self.groups:
            kill_group(pgid, signal.SIGKILL)
        self.groups = []


def kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def indent(text):
    return "\n".join(f"  | {l}" for l in text.split("\n"))


def tail(log, n=40):
    lines = read(log).rstrip("\n").split("\n")
    return f"  last {min(n, len(lines))} lines of its output ({log}):\n" + indent("\n".join(lines[-n:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--setup", action="store_true", help="also run the setup (build) blocks, in the repository")
    parser.add_argument("--bin-dir", default=os.path.join(REPO, "target", "debug"))
    parser.add_argument("--keep", action="store_true", help="keep the scratch directories")
    args = parser.parse_args()
    files = args.files or (
        [os.path.join(REPO, "README.md")]
        + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
        + [os.path.join(REPO, "plugins", "sdk", "README.md")]
    )
    started = time.monotonic()
    try:
        parsed = [(f, parse(os.path.abspath(f))) for f in files]  # every file checked before any runs
    except DocsError as error:
        print(f"docs-test: FAIL {error}", file=sys.stderr)
        return 1
    session = None

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        for path, blocks in parsed:
            counts = {}
            file_started = time.monotonic()
            session = Session(os.path.abspath(args.bin_dir), args.setup)
            passed = False
            try:
                for block in blocks:
                    outcome = session.run(block)
                    counts[outcome] = counts.get(outcome, 0) + 1
                passed = True
            finally:
                session.close()
                if passed and not args.keep:
                    shutil.rmtree(session.dir, ignore_errors=True)
                else:
                    print(f"docs-test: scratch directory kept: {session.dir}", file=sys.stderr)
            summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no blocks"
            print(f"docs-test: ok {os.path.relpath(path, REPO)}: {summary} ({time.monotonic() - file_started:.1f} s)")
    except DocsError as error:
        print(f"docs-test: FAIL {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stopped:
        print(f"docs-test: stopped ({stopped})", file=sys.stderr)
        return 1
    print(f"docs-test: all docs ran as written ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
