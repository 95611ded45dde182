"""Reading ``python [options] <program> [args]``: which program a Python command line runs.

The one reader of interpreter command lines in Elastiscope. The timeline names a worker's
program from it, and warm standbys use it to decide whether a worker can be started from a
standby interpreter. A leaf: imports nothing of ours and nothing from torch.

The grammar is the interpreter's own (``python --help``): single-letter options may be run
together (``-uB``); an option that takes a value takes the rest of its word or else the next
word (``-Wignore``, ``-W ignore``); ``-c`` and ``-m`` take the program the same way and end
the options; ``-`` (standard input), ``--`` or the first word that is not an option ends
them too, and the program's own arguments follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PythonCommand", "parse_python_args"]

# What each interpreter option does, as far as reading the command line is concerned:
# TUNES     -- changes how the interpreter runs, not which program it runs or how it is entered;
# VALUE     -- tunes, and takes a value (the rest of its word, else the next word);
# PROGRAM   -- names the program: the value is a command (-c) or a module (-m);
# OTHER     -- anything else: interactive mode after the program (-i), skipping the source's
#              first line (-x), printing help or the version and exiting.
TUNES, VALUE, PROGRAM, OTHER = "tunes", "value", "program", "other"
_OPTIONS = {
    **dict.fromkeys("bBdEIOPqRsSuv", TUNES),
    "W": VALUE,
    "X": VALUE,
    "--check-hash-based-pycs": VALUE,
    "c": PROGRAM,
    "m": PROGRAM,
    **dict.fromkeys("ixhV?", OTHER),
    **dict.fromkeys(("--help", "--version", "--help-env", "--help-xoptions", "--help-all"), OTHER),
}


@dataclass(frozen=True)
class PythonCommand:
    """The arguments of a ``python`` command line, taken apart.

    ``options`` are the words before the program, values included, as written. At most one of
    ``script`` (a path, or ``-`` for standard input), ``module`` and ``command`` is set; none
    when the words name no program. ``only_tunes`` is True when every option merely tunes the
    interpreter: the program then runs as it would under a plain ``python``.
    """

    options: tuple[str, ...]
    script: str | None
    module: str | None
    command: str | None
    args: tuple[str, ...]
    only_tunes: bool

    @property
    def label(self) -> str | None:
        """What the command runs, for a person reading a timeline: the script, ``-m module``,
        ``-c`` (never the code itself), ``-``; None when no program is named."""
        if self.module is not None:
            return f"-m {self.module}"
        if self.command is not None:
            return "-c"
        return self.script


def parse_python_args(args: Sequence[str]) -> PythonCommand:
    """Take apart the arguments of a ``python`` command (the words after the interpreter).

    A ``-c`` or ``-m`` with no value left names an empty command or module.
    """
    words = [str(a) for a in args]
    only_tunes = True
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-" or not word.startswith("-"):
            return PythonCommand(tuple(words[:i]), word, None, None, tuple(words[i + 1 :]), only_tunes)
        if word == "--":
            # Ends the options: the next word is the script even if it starts with "-".
            options, rest = tuple(words[: i + 1]), words[i + 1 :]
            script = rest[0] if rest else None
            return PythonCommand(options, script, None, None, tuple(rest[1:]), False)
        taken, program = _read_option_word(words, i)
        if program is not None:
            letter, value, letters_before = program
            options, rest = tuple(words[:i]), tuple(words[i + taken :])
            if letters_before:  # "-um mod": the "-u" is an option of its own
                options += (letters_before,)
                only_tunes = only_tunes and _only_tunes(letters_before)
            if letter == "m":
                return PythonCommand(options, None, value, None, rest, only_tunes)
            return PythonCommand(options, None, None, value, rest, only_tunes)
        only_tunes = only_tunes and _only_tunes(word)
        i += taken
    return PythonCommand(tuple(words), None, None, None, (), only_tunes)


def _read_option_word(words: list[str], i: int) -> tuple[int, tuple[str, str, str] | None]:
    """How many words the option at ``words[i]`` spans and, if it names the program, ("c" or
    "m", the value, the option letters before it as a word of their own or "")."""
    word = words[i]
    if word.startswith("--"):
        return (2 if _OPTIONS.get(word) == VALUE else 1), None
    for at, letter in enumerate(word[1:], start=2):
        kind = _OPTIONS.get(letter, OTHER)
        if kind in (VALUE, PROGRAM):
            value = word[at:]
            taken = 1
            if not value:
                value = words[i + 1] if i + 1 < len(words) else ""
                taken = 2 if i + 1 < len(words) else 1
            if kind == VALUE:
                return taken, None
            return taken, (letter, value, word[: at - 1] if at > 2 else "")
    return 1, None


def _only_tunes(word: str) -> bool:
    """Whether an option word (not naming the program) only tunes the interpreter."""
    if word.startswith("--"):
        return _OPTIONS.get(word) in (TUNES, VALUE)
    for letter in word[1:]:
        kind = _OPTIONS.get(letter, OTHER)
        if kind == VALUE:
            return True  # the rest of the word is the value
        if kind != TUNES:
            return False
    return True
