"""The CLI skeleton: instant help, version, plugin listing, one-line errors and --debug tracebacks."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from cmamil import __version__
from cmamil.cli import main


def test_import_and_help_do_not_import_torch():
    code = (
        "import sys; import cmamil; from cmamil.cli import main\n"
        "try:\n    main(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert "plugins" in out.stdout


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_plugins_list_shows_builtins_and_example_package():
    result = CliRunner().invoke(main, ["plugins", "list"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert rows["deit_small"][1:5] == ["model", "cmamil", __version__, "ok"]
    assert rows["swin_tiny"][2] == "cmamil"
    assert rows["example_cnn"][2] == "cmamil-example-plugin"
    assert rows["example_max"][1] == "aggregator"


def test_plugins_list_check_builds_and_reports_broken(install_dist):
    install_dist(
        "broken-plugin",
        {"cmamil.models": {"broken_net": "broken_plugin_mod:factory"}},
        {"broken_plugin_mod.py": "import not_a_real_module_xyz\n"},
    )
    result = CliRunner().invoke(main, ["plugins", "list", "--kind", "models", "--check"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:] if line.strip()}
    assert "broken: model 'broken_net' from package 'broken-plugin'" in lines["broken_net"]
    assert "No module named 'not_a_real_module_xyz'" in lines["broken_net"]
    assert lines["example_cnn"].rstrip().endswith("ok")
    assert "1 plugin(s) broken" in result.output
    assert "example_max" not in lines


def test_library_error_is_one_line_exit_1_and_debug_shows_traceback(install_dist):
    install_dist(
        "broken-plugin",
        {"cmamil.models": {"broken_net": "broken_plugin_mod:factory"}},
        {"broken_plugin_mod.py": "raise ImportError('boom')\n"},
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from cmamil.cli import main; import click\n"
        "@click.command()\ndef fail():\n    from cmamil.models import create_model; create_model('broken_net')\n"
        "from cmamil import cli; cli.COMMANDS['fail'] = ('__main__', 'fail', 'fail')\n"
        "main(sys.argv[2:])\n"
    )
    site = str(next(p for p in sys.path if p.endswith("site")))
    plain = subprocess.run([sys.executable, "-c", code, site, "fail"], capture_output=True, text=True)
    assert plain.returncode == 1
    assert plain.stderr.strip().count("\n") == 0
    assert plain.stderr.startswith("Error: model 'broken_net' from package 'broken-plugin' 1.0 failed to load")
    debug = subprocess.run([sys.executable, "-c", code, site, "--debug", "fail"], capture_output=True, text=True)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
