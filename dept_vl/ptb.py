"""PTB-style caption tokenisation: what the COCO caption evaluation does before BLEU and CIDEr.

The official evaluation (pycocoevalcap's PTBTokenizer) runs Stanford CoreNLP 3.4.1's
PTBTokenizer through Java with `-preserveLines -lowerCase` and then drops the tokens in its
PUNCTUATIONS list. `ptb_tokenize` does the same in Python for the text captions hold: it
lowercases; splits clitics as the PTB does ("dog's" -> dog 's, "can't" -> ca n't, "cannot" ->
can not); keeps hyphenated words, "a/b", "1,000", "3.5" and "3:30" whole; keeps the period of
known abbreviations, acronyms and single letters ("st.", "u.s.", "c.") and splits it off
other words; turns brackets into -lrb- / -rrb- / -lsb- / -rsb- / -lcb- / -rcb- (which the
official list does not drop, since it compares them upper-case); keeps symbols ($ % & # + =
...) and runs of ! and ? as tokens; and drops what the official list drops: quotes, `.`, `,`,
`:`, `;`, single `!` and `?`, hyphens and dashes, ellipses.

It gives the Java tokenizer's tokens for every caption of benchmarks/coco_style_captions.txt
(tests/test_ptb.py checks it where `java` is installed). Known differences, in text captions
rarely hold: URLs, "c++", "rock'n'roll", "ol'", "5 1/2" (one token in Java), runs of one
symbol ("##"), letters glued to a number after a colon ("3:30pm") or a period ("v1.2"),
",5", a ! or ? inside a word ("wow!really"), a contraction after a hyphen or slash
("who/don't"), the Java lexer's reading of a quoted word that starts like a clitic ('empty'
-> 'em pty, ’sheep’ -> 's heep), and characters such as „ or ´.
"""

from __future__ import annotations

import re

# tokens the official COCO evaluation removes after tokenising (pycocoevalcap PUNCTUATIONS)
REMOVED = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                     ".", "?", "!", ",", ":", "-", "--", "...", ";"})
# what that removal drops in practice: it compares the tokens after -lowerCase, so "-lrb-" and
# its kin never match their upper-case entries and stay
_DROPPED = frozenset(token for token in REMOVED if not token.startswith("-L"))
# single characters the lexer rewrites: brackets, and quotes (`` '' ` ', dropped)
_RENAMED = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-",
            '"': "''", "\u2019": "'"}
# typographic characters the PTB lexer reads as their ASCII forms (dashes: a "--" token); the
# closing quote ’ is read as an apostrophe where it is one (see _APOSTROPHE)
_ASCII = str.maketrans({"\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00ab": '"',
                        "\u00bb": '"', "\u2039": "'", "\u203a": "'",
                        "\u2014": " -- ", "\u2013": " -- ", "\u2026": " ... ",
                        "\u00bd": "1/2", "\u00bc": "1/4", "\u00be": "3/4",
                        "\u20ac": "$", "\u00a3": "#", "\u00a2": " cents "})
# abbreviations whose period stays on the word, any case (found by running the Java tokenizer)
_ABBREVIATIONS = frozenset("""
    mr mrs ms dr st mt ave rd blvd jr sr inc co corp ltd bros vs etc messrs esq mme mlle
    gen gov sen rep prof capt lt col sgt rev hon maj brig insp det adm cmdr pres supt
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs fri
    dept est ft sq mfg univ assn ct ste cf al
    calif ariz ga fla ala colo conn dak ind kan kans ky md mich minn mo mont neb nev okla
    penn tenn va vt wis wisc wyo""".split())
# ... only when capitalised ("Mass." keeps it, "mass." does not)
_CAPITALISED_ABBREVIATIONS = frozenset("mass az ark del ill la miss ore pa tex wash".split())
# ... only before a number ("No. 5")
_NUMBER_ABBREVIATIONS = frozenset("no nos art pp fig ca".split())
_ACRONYM = re.compile(r"[a-z]{1,2}(?:\.[a-z]{1,2})+")  # u.s, p.m, e.g, ph.d
# whole words the PTB splits in two, at this offset ("gonna" -> gon na)
_SPLIT_WORDS = {"cannot": 3, "gonna": 3, "gotta": 3, "wanna": 3, "lemme": 3, "gimme": 3,
                "y'all": 2}
_NOT = re.compile(r"(.+)(n['\u2019]t)", re.IGNORECASE)  # "don't" -> do n't

_L = r"[^\W_]"  # a letter or digit
_A = r"[^\W\d_]"  # a letter
_APOSTROPHE = "['\u2019]"
# a clitic that ends a word: "dog's" is dog + 's, "it's-raining" it + 's + raining
_CLITIC = (rf"{_APOSTROPHE}(?i:t(?=(?:is|was)\b)"  # 'tis -> 't is
           rf"|(?:\d\ds|em|cause|til|n'?|s|re|ll|ve|m|d)(?!{_L}))")
# one token at a time, as the lexer does: a word's periods come before any hyphen or slash in
# it ("u.s", "dog.a"; "a-white.airplane" is a-white . airplane), and a period before a digit
# joins digits only ("1.5"; "with.10" is with .10)
_TOKEN = re.compile(rf"""
    (?P<clitic>{_CLITIC})
  | (?P<number>(?:(?<!{_L})[-+]|\.)\d+(?:[.,:]\d+)*)  # "-10-year-old" is -10 year-old
  | (?P<word>(?:[#@](?={_A}))?{_L}+
        (?:(?:\.(?={_A})|(?<=\d)[.,:](?=\d)){_L}+)*
        (?:(?:(?<![nN]{_APOSTROPHE}[tT])[-/_@]|(?<={_A})(?!{_CLITIC}){_APOSTROPHE}(?={_A})
             |(?<=\d)[,:](?=\d)
             |(?<=[A-Z])&(?=[A-Z])){_L}+)*)
    (?P<dot>\.(?!\d))?
  | (?P<run>[!?]{{2,}}|\.+|-+)
  | (?P<other>\S)
""", re.VERBOSE)



def ptb_tokenize(text: str) -> str:
    """`text` tokenised as the COCO caption evaluation does: lowercase tokens joined by single
    spaces, without the punctuation that evaluation removes."""
    text = text.replace("\n", " ").translate(_ASCII)
    tokens = [token.lower() for match in _TOKEN.finditer(text) for token in _tokens_of(match)]
    return " ".join(token for token in tokens if token not in _DROPPED)


def _tokens_of(match: re.Match) -> list[str]:
    """The PTB tokens of one match of `_TOKEN`."""
    if match.group("word") is not None:
        word = match.group("word")
        if match.group("dot") is None:
            return _split_clitics(word)
        if _keeps_period(word, match.string[match.end():]):
            return [word + "."]
        return [*_split_clitics(word), "."]
    if match.group("run") is not None:  # "!!" stays; runs of periods or hyphens are dropped
        run = match.group("run")
        return [run] if run[0] in "!?" else ["."]
    other = match.group("other")
    if other is not None:
        return [_RENAMED.get(other, other)]
    if match.group("clitic") is not None:
        return [match.group("clitic").replace("\u2019", "'")]
    return [match.group("number")]


def _keeps_period(word: str, after: str) -> bool:
    """Whether the PTB keeps the period after `word` on it ("st.", "u.s.", "c.")."""
    lower = word.lower()
    if len(word) == 1 and word.isascii() and word.isalpha():
        return True
    if lower in _ABBREVIATIONS or _ACRONYM.fullmatch(lower):
        return True
    if lower in _CAPITALISED_ABBREVIATIONS:
        return word[0].isupper()
    return lower in _NUMBER_ABBREVIATIONS and after.lstrip()[:1].isdigit()


def _split_clitics(word: str) -> list[str]:
    """The PTB's splits inside a word: "don't" -> do n't, "gonna" -> gon na, "y'all" -> y' all
    (clitics such as 's end a word before it gets here, see _CLITIC)."""
    cut = _SPLIT_WORDS.get(word.lower())
    if cut is not None:
        return [word[:cut], word[cut:]]
    match = _NOT.fullmatch(word)
    return [match.group(1), match.group(2).replace("\u2019", "'")] if match else [word]
