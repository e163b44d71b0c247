"""Developer sessions. ``nox`` runs lint, typecheck and each package's tests in its own venv
(installed with ``uv sync --package``: proves every package declares its own dependencies).

    nox -s tests-llm      # one package
    nox -s gpu            # tests marked gpu (skipped without CUDA)
"""

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "typecheck", "tests"]

PACKAGES = ["core", "tokenizer", "vae", "llm", "flow", "pipeline"]


def _sync(session: nox.Session, *args: str) -> None:
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--group",
        "dev",
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )


@nox.session
@nox.parametrize("package", PACKAGES, ids=PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """One package's tests, with only that package (and what it depends on) installed."""
    _sync(session, "--package", f"mmspeech-{package}")
    session.run("pytest", f"packages/{package}/tests", "-m", "not gpu", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """Tests marked ``gpu`` across all packages (each skips itself when CUDA is absent)."""
    _sync(session, "--all-packages")
    session.run("pytest", "packages", "-m", "gpu", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    _sync(session, "--all-packages")
    session.run("ruff", "check", "packages", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "packages", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    _sync(session, "--all-packages")
    session.run("mypy", *[f"packages/{p}/src" for p in PACKAGES])
