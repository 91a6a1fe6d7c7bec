"""The Dockerfile: clean under hadolint and checkov, and the image issue 15 asks for,
read from the file itself. Building and running the image is `make image
image-smoke`, too slow for the suite; this only reads files."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest
import stack

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
BIN = Path(sysconfig.get_path("scripts"))
SCRIPTS = [REPO / "scripts" / name for name in ("image", "image-base", "image-smoke")]
VENV = "/opt/soundstream"
# Names of build arguments and variables that would carry a credential.
SECRET_NAME = re.compile(
    r"passw|secret|token|credential|api_?keys?|private|_key$|cert|dsn|_url$|auth", re.I
)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


def instructions(text: str) -> list[Instruction]:
    """The instructions, continuation lines joined; comments and directives dropped."""
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1] if continued else stripped)
        if not continued:
            keyword, _, arguments = " ".join(pending).partition(" ")
            found.append(Instruction(keyword.upper(), " ".join(arguments.split()), start))
            pending = []
    assert not pending, "the Dockerfile ends inside a continued line"
    return found


def stages(parsed: list[Instruction]) -> tuple[list[Instruction], list[list[Instruction]]]:
    """The instructions before the first FROM, and each stage from its FROM on."""
    firsts = [i for i, instruction in enumerate(parsed) if instruction.keyword == "FROM"]
    bounds = [*firsts, len(parsed)]
    return parsed[: firsts[0]], [parsed[a:b] for a, b in itertools.pairwise(bounds)]


def stage_name(stage: list[Instruction]) -> str:
    words = stage[0].arguments.split()
    return words[2] if len(words) == 3 and words[1].lower() == "as" else ""


def pairs(arguments: str) -> dict[str, str]:
    """``ENV``, ``ARG`` or ``LABEL`` arguments as a mapping (quotes removed)."""
    found = {}
    for match in re.finditer(r'([\w.\-]+)(?:=("[^"]*"|\S*))?', arguments):
        found[match[1]] = (match[2] or "").strip('"')
    return found


@pytest.fixture(scope="module")
def parsed() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(parsed: list[Instruction]) -> list[Instruction]:
    return stages(parsed)[1][-1]


def only(stage: list[Instruction], keyword: str) -> list[Instruction]:
    return [instruction for instruction in stage if instruction.keyword == keyword]


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_checkov_passes_with_reasons_for_every_skip() -> None:
    results = stack.checkov(DOCKERFILE, "dockerfile")["results"]
    failed = [f"{c['check_id']} {c['check_name']}" for c in results["failed_checks"]]
    assert failed == []
    assert len(results["passed_checks"]) > 10
    skipped = {
        c["check_id"]: c["check_result"].get("suppress_comment") for c in results["skipped_checks"]
    }
    # HEALTHCHECK: Kubernetes probes do that. Base tag: checkov does not expand ARG BASE.
    assert set(skipped) <= {"CKV_DOCKER_2", "CKV_DOCKER_7"}
    assert all(reason and len(reason) > 20 for reason in skipped.values()), skipped


def test_shell_scripts_pass_shellcheck() -> None:
    done = subprocess.run(
        [str(BIN / "shellcheck"), "--format=gcc", *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_base_defaults_to_the_official_python_311_slim(parsed: list[Instruction]) -> None:
    before, built = stages(parsed)
    args = {k: v for i in only(before, "ARG") for k, v in pairs(i.arguments).items()}
    assert re.sub(r"^(docker\.io/)?(library/)?", "", args["BASE"]) == "python:3.11-slim"
    # Every stage starts from it (or from a stage that does), so the virtual
    # environment's interpreter link holds in the last one.
    names: set[str] = set()
    for stage in built:
        assert stage[0].arguments.split()[0] in {"${BASE}", *names}, stage[0]
        names.add(stage_name(stage))
    assert built[-1][0].arguments == "${BASE}"


def test_multi_stage_and_the_runtime_only_copies(
    parsed: list[Instruction], final: list[Instruction]
) -> None:
    _, built = stages(parsed)
    assert len(built) >= 2
    names = {stage_name(stage) for stage in built[:-1]}
    # It runs nothing (no package manager, no compiler): it takes the finished
    # virtual environment, the package and the user's entries from the stages above.
    assert only(final, "RUN") == [] and only(final, "ADD") == []
    sources = []
    for copy in only(final, "COPY"):
        origin, *paths, _ = copy.arguments.split()
        assert origin.removeprefix("--from=") in names, copy
        sources += paths
    assert sorted(sources) == sorted(["/etc/passwd", "/etc/group", VENV, "/app/"])


def test_the_package_is_built_from_source_without_extras(parsed: list[Instruction]) -> None:
    _, built = stages(parsed)
    runs = " ".join(i.arguments for stage in built[:-1] for i in only(stage, "RUN"))
    assert f"python3 -m venv --without-pip {VENV}" in runs
    assert f"PIP_PYTHON={VENV}/bin/python" in " ".join(
        i.arguments for stage in built[:-1] for i in only(stage, "ENV")
    )
    assert re.search(r"pip install --no-deps .*--root /app \.(\s|$)", runs)
    assert "--editable" not in runs and " -e " not in runs and ".[" not in runs


def test_the_final_user_is_numeric_and_not_root(final: list[Instruction]) -> None:
    users = only(final, "USER")
    assert users, "the runtime stage sets no USER"
    user = users[-1].arguments
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user} is not numeric"
    assert all(int(part) != 0 for part in user.split(":"))
    # The deployments run as this id (runAsUser) and the image names it.
    assert user.split(":")[0] == "10001"


def test_no_healthcheck_kubernetes_probes_instead(parsed: list[Instruction]) -> None:
    assert only(parsed, "HEALTHCHECK") == []


def test_one_entrypoint_serving_by_default(final: list[Instruction]) -> None:
    assert [json.loads(i.arguments) for i in only(final, "ENTRYPOINT")] == [["soundstream"]]
    assert [json.loads(i.arguments) for i in only(final, "CMD")] == [["serve"]]
    assert [i.arguments for i in only(final, "EXPOSE")] == ["8080"]


def test_runtime_environment_suits_a_read_only_root(final: list[Instruction]) -> None:
    env = {k: v for i in only(final, "ENV") for k, v in pairs(i.arguments).items()}
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith(f"{VENV}/bin:")
    # The kernels are cached on disk (numba's cache=True), the one thing the
    # service writes: under /tmp, the deployments' emptyDir and the smoke run's tmpfs.
    assert env["NUMBA_CACHE_DIR"].startswith("/tmp/")
    kernels = (REPO / "soundstream" / "core" / "kernels.py").read_text(encoding="utf-8")
    assert "cache=True" in kernels or "cache=cache" in kernels


def test_oci_labels(final: list[Instruction]) -> None:
    labels = {k: v for i in only(final, "LABEL") for k, v in pairs(i.arguments).items()}
    for name in ("title", "description", "version", "licenses"):
        assert labels.get(f"org.opencontainers.image.{name}"), name
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_no_secret_in_build_arguments_or_environment(parsed: list[Instruction]) -> None:
    for instruction in only(parsed, "ARG") + only(parsed, "ENV"):
        for name, value in pairs(instruction.arguments).items():
            assert not SECRET_NAME.search(name), f"line {instruction.line}: {name}"
            assert not re.search(r"://[^/\s]*@", value), f"line {instruction.line}: {name}"
    # pip's settings reach the build only as a secret mount of pip.conf, and the
    # image's environment holds none.
    _, built = stages(parsed)
    assert not [i for i in only(built[-1], "ENV") if "PIP_" in i.arguments]
    for run in only(parsed, "RUN"):
        if re.search(r"\bpip install\b", run.arguments):
            assert "--mount=type=secret,id=pip.conf,target=/etc/pip.conf" in run.arguments


def test_the_build_context_is_the_package_alone(parsed: list[Instruction]) -> None:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "soundstream"}
    for copy in only(parsed, "COPY"):
        words = [w for w in copy.arguments.split() if not w.startswith("--")]
        if not copy.arguments.startswith("--from="):
            assert {source.rstrip("/") for source in words[:-1]} <= allowed, copy
