from mmspeech_core.cli import add_command, add_device_arg, make_parser


def _help(argv_command: str) -> str:
    p, sub = make_parser("prog", "test")
    sp = add_command(sub, argv_command, "a command", lambda args: 0)
    sp.add_argument("--steps", type=int, default=10, help="how many")
    sp.add_argument("--mode", default="auto", help="how (default: auto, cuda on a GPU)")
    sp.add_argument("--out", required=True, help="folder")
    add_device_arg(sp)
    return " ".join(sp.format_help().split())


def test_help_shows_each_default_once():
    text = _help("run")
    assert "how many (default: 10)" in text
    assert text.count("(default: auto") == 1  # the help's own wording, not a second one appended
    assert "folder (default" not in text  # required: nothing to show
    assert text.count("(default: cuda when available)") == 1
