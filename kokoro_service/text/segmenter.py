"""Text segmentation: turns a stream of text pieces into speakable segments.

A segment is what one AUDIO frame carries: a sentence, or a clause of a long sentence.
Segments must be cut where a speaker would pause anyway, so that synthesising them one by
one keeps natural prosody, while the *first* segment of each utterance is kept short so
that the caller hears audio as early as possible.

Over 400 lines: the cutting rules (sentence, clause, word, first segment, growth) and
the reasons for each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Words whose trailing period does not end a sentence.
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "inc",
        "ltd",
        "co",
        "corp",
        "dept",
        "est",
        "fig",
        "no",
        "approx",
        "apt",
        "ave",
        "blvd",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "sat",
        "sun",
        "a.m",
        "p.m",
        "u.s",
        "u.k",
    ]
)
# Short words a speaker naturally pauses before; used only when a long stretch of text
# has no punctuation at all and a cut must be made somewhere.
_BREATH_WORDS = frozenset(
    [
        "and",
        "but",
        "or",
        "so",
        "because",
        "which",
        "who",
        "that",
        "when",
        "where",
        "while",
        "if",
        "then",
        "although",
        "though",
    ]
)
# Words that lean on the next word: a segment should not end on one of them.
_CLINGERS = frozenset(
    """a an the my your our their his her its this that these those to of in on at for with
    from by into onto about as than and or but nor so if is are was were be been am will
    would can could should shall may might must do does did have has had not no very""".split()
)
# Abbreviations that lead into the next word (a name, a street, a day): a cut right after
# one strands it ("Dr." | "Smith", "St." | "Louis", "Mar." | "3rd"), as does a cut after
# an initial ("W." | "Main").
_LEADING_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st mt no apt jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
# Street types end the street's name: no cut between the name and its type ("Main" | "St.").
_STREET_TYPES = frozenset("st ave blvd rd dr ln ct pl pkwy hwy".split())
# A comma after a weekday is inside a date ("Tue., Mar. 3rd"), not the end of a clause.
_WEEKDAYS = frozenset(
    """mon tue tues wed thu thur thurs fri sat sun monday tuesday wednesday thursday friday
    saturday sunday""".split()
)
# Abbreviations that may also end a sentence: their dot does, when a capitalised word
# follows that does not continue a date ("I spoke with Jan. She said..." is two sentences;
# "Tue. Mar. 3rd", "Jan. 2026", "room no. 5" are one).  A bare "no." is more often the
# word than the number sign ("No. That won't work.").  phonetext.normalize makes the same
# call, so a dot it leaves for the sentence end is the dot cut here.
_SENTENCE_ABBREVIATIONS = frozenset(
    "no jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun".split()
)
# Words that continue a date after a month or day abbreviation: "Tue. Mar. 3rd".
_CALENDAR_WORDS = (
    frozenset(
        """jan feb mar apr may jun jul aug sep sept oct nov dec january february march april
    june july august september october november december""".split()
    )
    | _WEEKDAYS
)
# Japanese and Chinese write their marks full width with no space after them: each ends
# its unit whatever follows.  Without them a run of such text had no boundary at all, so
# it waited for 80 characters (a "word" too long) and was then cut mid-word.
_UNSPACED_SENTENCE_END = "。！？"
_UNSPACED_CLAUSE_MARKS = "、，；："
_UNSPACED = _UNSPACED_SENTENCE_END + _UNSPACED_CLAUSE_MARKS
_SENTENCE_END = "!?…।" + _UNSPACED_SENTENCE_END  # । : the Devanagari full stop (Hindi)
_CLAUSE_MARKS = ",;:—–" + _UNSPACED_CLAUSE_MARKS
_CLOSERS = "\"')]}”’»」』）"
_WS = re.compile(r"[ \t\r\f\v\u00a0]+")


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    """Where the segmenter cuts.  Defaults suit Kokoro-82M on telephony replies."""

    max_chars: int = 200
    """Longest segment; longer sentences are cut at clauses, then at words."""
    first_max_words: int = 8
    """Longest first segment of an utterance when no punctuation comes earlier."""
    max_word_chars: int = 80
    """A 'word' longer than this (no spaces) is cut hard, bounding its phoneme count."""
    growth: float = 2.0
    """After the first segment, each segment may be at most ``growth`` times the text
    already released in the utterance (until that exceeds ``max_chars``).  Synthesis of
    the next segment then finishes before the audio already sent has played out, so the
    short first segment does not cost a stall.  0 releases whole sentences instead."""
    min_chars: int = 32
    """Smallest budget for a segment released under ``growth``."""

    def __post_init__(self) -> None:
        if self.max_chars < 16:
            raise ValueError("max_chars must be at least 16")
        if self.first_max_words < 1:
            raise ValueError("first_max_words must be at least 1")
        if not 8 <= self.max_word_chars <= self.max_chars:
            raise ValueError("max_word_chars must be in 8..max_chars")
        if self.growth != 0 and not 1.0 <= self.growth <= 100.0:
            raise ValueError("growth must be 0 (off) or 1..100")
        if not 1 <= self.min_chars <= self.max_chars:
            raise ValueError("min_chars must be in 1..max_chars")


class Segmenter:
    """Buffers a call's incoming text and releases speakable segments in order.

    Responsibilities:

    1. Join pieces that arrive off word boundaries (LLM tokens) and normalise whitespace.
    2. Cut at sentence ends, at clause marks when a sentence runs long, at words when no
       punctuation comes, and hard inside a single over-long word.
    3. Keep the first segment of each utterance short (its first clause, or a few words).

    It never drops text: everything pushed comes back out of :meth:`push` or
    :meth:`flush`, apart from whitespace.
    """

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self.config = config or SegmenterConfig()
        self._buf = ""
        self._first = True
        self._released = 0  # characters released so far in this utterance

    @property
    def pending_chars(self) -> int:
        return len(self._buf)

    @property
    def at_utterance_start(self) -> bool:
        return self._first

    def start_utterance(self) -> None:
        """The next segment opens a new utterance, so it is kept short again."""
        self._first = True
        self._released = 0

    def reset(self) -> None:
        """Drop buffered text (barge-in); the next segment opens a new utterance."""
        self._buf = ""
        self._first = True
        self._released = 0

    def append(self, text: str) -> None:
        """Buffer ``text`` without cutting; :meth:`take` cuts when a segment is wanted.

        Text frames are joined as sent, but a frame that ends a sentence or clause keeps
        that boundary even when the next frame starts without a space ("...calling." +
        "Your ..."), as it would have had the segment been cut on arrival.
        """
        text = _WS.sub(" ", text)
        if text and not text[0].isspace() and self._ends_at_boundary(text):
            self._buf += " "
        self._buf += text

    def _ends_at_boundary(self, text: str) -> bool:
        i = len(self._buf.rstrip(_CLOSERS)) - 1
        if i < 0 or self._buf[i] not in _SENTENCE_END + "." + _CLAUSE_MARKS:
            return False
        # Whether a dot ends an abbreviation may depend on what follows ("Jan." + "She").
        if self._buf[i] == "." and _ends_abbreviation(f"{self._buf} {text}", i):
            return False
        return _is_boundary_at(self._buf, i, final=False) is not None

    def take(
        self, *, final: bool = False, load: float = 1.0, budget: int | None = None
    ) -> str | None:
        """Cut and return the next segment, or None while more text is needed.

        ``load`` is how many calls share the synthesis workers right now: the growth of
        segment sizes is divided by it, because each call then gets that much less of
        the compute while its listener plays.  ``budget``, when the caller knows how much
        audio the listener still has queued, caps the segment in characters directly.
        With ``final`` the rest is released.
        """
        while self._buf.strip():
            cut = self._find_cut(final=final, load=load, budget=budget)
            if cut is None:
                if not final:
                    return None
                cut = len(self._buf)
            out: list[str] = []
            self._emit(cut, out)
            if out:
                return out[0]
        self._buf = ""
        return None

    def push(self, text: str) -> list[str]:
        """Add ``text``; return every segment it completes."""
        self.append(text)
        return list(iter(self.take, None))

    def flush(self, *, keep_partial_word: bool = False) -> list[str]:
        """Return every remaining segment (end of the call's text, or the LLM went quiet).

        With ``keep_partial_word`` the characters after the last space stay buffered,
        since a stalled token stream may be in the middle of a word.
        """
        kept = ""
        if keep_partial_word:
            head, sep, tail = self._buf.rpartition(" ")
            if not sep:
                return []
            self._buf, kept = head, tail
        out = list(iter(lambda: self.take(final=True), None))
        self._buf = kept
        return out

    def _emit(self, cut: int, out: list[str]) -> None:
        segment, self._buf = self._buf[:cut].strip(), self._buf[cut:].lstrip(" ")
        if segment.strip(" \n"):
            out.append(" ".join(segment.split()))
            self._first = False
            self._released += len(out[-1])

    # ------------------------------------------------------------------ boundaries

    def _find_cut(self, *, final: bool, load: float = 1.0, budget: int | None = None) -> int | None:
        """Index just past where the next segment ends, or None to wait for more text."""
        buf = self._buf
        if not buf.strip():
            return None
        cfg = self.config
        limit = cfg.max_chars
        if self._first:
            # The earlier of the first clause and a few words, so first audio comes fast;
            # fewer words when other calls are waiting for the same workers.
            first_words = cfg.first_max_words
            if cfg.growth:  # adaptive mode only; growth=0 cuts the same text the same way
                first_words = max(3, int(first_words / max(1.0, load)))
            cuts = [
                c
                for c in (
                    _first_boundary(buf, clauses=True, final=final, limit=limit),
                    _word_cut(buf[: limit + 1], first_words, final=final),
                )
                if c is not None
            ]
            if cuts:
                return min(cuts)
        if budget is not None and cfg.growth and self._released:
            if budget < limit:
                return _budget_cut(buf, max(cfg.min_chars, budget), cfg.max_word_chars, final=final)
            growth = 0.0  # plenty of audio queued: whole sentences
        else:
            growth = max(1.0, cfg.growth / max(1.0, load)) if cfg.growth else 0.0
        if growth and self._released and self._released * growth < limit:
            budget = max(cfg.min_chars, int(self._released * growth))
            return _budget_cut(buf, budget, cfg.max_word_chars, final=final)
        sentence = _first_boundary(buf, clauses=False, final=final, limit=limit)
        if sentence is not None:
            return sentence
        head = buf[: limit + 1]
        long_word = _long_word_cut(head, cfg.max_word_chars)
        if long_word is not None:
            return long_word
        if len(buf) <= limit:
            return None
        # A sentence longer than max_chars: cut at its last clause mark, else its last
        # word break (before a breath word where possible), else hard.
        clause = _last_boundary(head, _CLAUSE_MARKS)
        if clause is not None and clause >= limit // 4:
            return clause
        return _last_word_break(head) or limit


def _budget_cut(buf: str, budget: int, max_word_chars: int, *, final: bool) -> int | None:
    """The longest segment within about ``budget`` characters, cut where a speaker pauses.

    Punctuation may overshoot the budget by a quarter, since a cut there costs no prosody;
    a sentence end beats a clause mark.  Without punctuation the cut falls between words,
    never right after a word that leans on the next one ("your", "the", "to").
    """
    soft = budget + budget // 4
    best: dict[bool, int] = {}
    for i, ch in enumerate(buf[: soft + 1]):
        if ch == "\n" and buf[:i].strip():
            best.setdefault(True, i + 1)
            break
        if ch not in _SENTENCE_END + "." + _CLAUSE_MARKS or not buf[:i].strip():
            continue
        if _inside_phrase(buf, i):
            continue
        cut = _is_boundary_at(buf, i, final=final)
        if cut is not None and cut <= soft + 1:
            best[ch not in _CLAUSE_MARKS] = cut
    if best:
        return best.get(True, best.get(False))
    if len(buf) <= soft:
        return None  # wait for more text; flush() takes the rest
    head = buf[: budget + 1]
    long_word = _long_word_cut(head, max_word_chars)
    if long_word is not None:
        return long_word
    return _word_break_before(head) or _last_word_break(head) or budget


def _clings(word: str) -> bool:
    """Whether a segment may not end on ``word``: a function word, a number (its unit,
    or the next digit of a spelled-out sequence, follows), a title or an initial."""
    if word.lower() in _CLINGERS or any(c.isdigit() for c in word):
        return True
    bare = word.lower()[:-1]
    return word.endswith(".") and (
        bare in _LEADING_ABBREVIATIONS or (len(bare) == 1 and bare.isalpha())
    )


def _breakable(prev: str, nxt: str) -> bool:
    """Whether a segment may end on word ``prev`` when ``nxt`` follows it."""
    if prev.endswith(".") and prev[:-1].lower() in _SENTENCE_ABBREVIATIONS:
        # "Jan." | "She": a sentence end; "Mar." | "3rd", "Tue." | "Mar.": one date.
        return _sentence_follows(" " + nxt)
    # "Tue.," | "Mar. 3rd": one date (the next word may still be arriving).
    if _clings(prev) or (_is_weekday(prev) and _date_follows(nxt, complete=False)):
        return False
    # "Main" | "St.": the type belongs to the name before it.
    return not (prev[:1].isupper() and nxt.lower().rstrip(".,") in _STREET_TYPES)


def _word_break_before(head: str) -> int | None:
    """Last space in ``head`` whose preceding word does not lean on the following one."""
    for m in reversed(list(re.finditer(r" ", head))):
        nxt = head[m.end() :].split(" ", 1)[0]
        if m.start() > 0 and _breakable(head[: m.start()].rsplit(" ", 1)[-1], nxt):
            return m.start()
    return None


def _is_boundary_at(buf: str, i: int, *, final: bool) -> int | None:
    """If the punctuation at ``buf[i]`` ends a unit, return the index just past it."""
    j = i + 1
    while j < len(buf) and buf[j] in _CLOSERS:
        j += 1
    if j < len(buf):
        return j if buf[j] in " \n" or buf[i] in _UNSPACED else None
    # The buffer ends right here: more text may follow.  A mark after a digit may be
    # inside a number ("3.50", "1,000", "3:30"), and a dot inside an unfinished e-mail
    # address or URL ("j.doe@acme." + "com"), so these wait; any other is taken at once.
    if final or buf[i] in _SENTENCE_END:
        return j
    if i > 0 and buf[i - 1].isdigit():
        return None
    return None if buf[i] == "." and _in_address(buf, i) else j


def _in_address(buf: str, dot: int) -> bool:
    """Whether ``buf[dot]`` ends an e-mail address or URL whose domain has no dot yet
    ("j.doe@acme.", "www."), so the dot must be inside it.  A complete one may end the
    sentence ("... at j.doe@acme.com."), which is then spoken at once."""
    word = buf[:dot].rsplit(None, 1)[-1].lower() if buf[:dot].strip() else ""
    if word == "www":
        return True
    for marker in ("@", "www.", "://"):
        if marker in word:
            return "." not in word.split(marker, 1)[1]
    return False


def _inside_phrase(buf: str, i: int) -> bool:
    """Whether the mark at ``buf[i]`` is inside a phrase rather than at its end: the dot
    of an abbreviation, or a comma after a weekday in a date ("Tue., Mar. 3rd")."""
    if buf[i] == ".":
        return _ends_abbreviation(buf, i)
    if buf[i] != ",":
        return False
    if not buf[:i].strip() or not _is_weekday(buf[:i].rsplit(None, 1)[-1]):
        return False
    rest = buf[i + 1 :]
    m = re.match(r"\s*(\S+)", rest)
    if m is None:
        return True  # nothing yet: a date may follow
    return _date_follows(m.group(1), complete=m.end() < len(rest))  # "Sun, it was warm"


def _date_follows(word: str, *, complete: bool) -> bool:
    """Whether ``word``, after a weekday, continues a date: a month or a number.  A word
    still arriving counts while it could grow into one ("M" -> "Mar.")."""
    if word[:1].isdigit():
        return True
    bare = word.rstrip(".,;:").lower()
    if complete or bare != word.lower():  # a mark after it ends the word too
        return bare in _CALENDAR_WORDS
    return any(name.startswith(bare) for name in _CALENDAR_WORDS)


def _is_weekday(word: str) -> bool:
    """Whether ``word`` names a weekday ("Tue.", "Tuesday,"); lower case is another word."""
    word = word.rstrip(".,")
    return word[:1].isupper() and word.lower() in _WEEKDAYS


def _ends_abbreviation(buf: str, dot: int) -> bool:
    start = dot
    while start > 0 and (buf[start - 1].isalpha() or buf[start - 1] == "."):
        start -= 1
    word = buf[start:dot].lower()
    if not word:
        return False
    if len(word) == 1 and word.isalpha():
        return True  # an initial such as "J. Smith"
    if word in _SENTENCE_ABBREVIATIONS:
        return not _sentence_follows(buf[dot + 1 :])
    return word in _ABBREVIATIONS


def _sentence_follows(rest: str) -> bool:
    """Whether ``rest``, the text after a month, day or "no." abbreviation's dot, opens a
    new sentence: a space, then a capitalised word that does not continue a date, and is
    no code ("Policy No. AB12").  A word still arriving that could grow into a month or
    day ("M", "Tu") is not yet one."""
    m = re.match(r" +(\S+)", rest)
    if m is None or not m.group(1)[:1].isupper():
        return False  # "Tue.,", "Mar. 3rd", "no. of", or nothing yet
    word = m.group(1)
    bare = word.rstrip(".,;:!?…" + _CLOSERS)
    if any(c.isdigit() for c in bare) or (len(bare) > 1 and bare.isupper()):
        return False
    bare = bare.lower()
    if bare in _CALENDAR_WORDS:
        return False
    complete = m.end() < len(rest) or len(bare) != len(word)
    return complete or not any(name.startswith(bare) for name in _CALENDAR_WORDS)


def _first_boundary(buf: str, *, clauses: bool, final: bool, limit: int) -> int | None:
    marks = _SENTENCE_END + "." + (_CLAUSE_MARKS if clauses else "")
    for i, ch in enumerate(buf):
        if i > limit:
            return None
        if ch == "\n":
            if buf[:i].strip():
                return i + 1
            continue
        if ch not in marks:
            continue
        if _inside_phrase(buf, i):
            continue
        if ch in _CLAUSE_MARKS and not buf[:i].strip():
            continue
        cut = _is_boundary_at(buf, i, final=final)
        if cut is not None:
            return cut
    return None


def _last_boundary(head: str, marks: str) -> int | None:
    for i in range(len(head) - 1, 0, -1):
        if head[i] in marks and not _inside_phrase(head, i):
            cut = _is_boundary_at(head, i, final=False)
            if cut is not None and cut <= len(head):
                return cut
    return None


def _word_cut(buf: str, max_words: int, *, final: bool) -> int | None:
    """Cut after at most ``max_words`` complete words, preferring a breath word."""
    spans = [m.span() for m in re.finditer(r"\S+", buf)]
    complete = spans if final else [s for s in spans if s[1] < len(buf)]
    if len(complete) <= max_words:
        return None
    # Prefer a pause before a conjunction in the second half of the window, else any
    # break whose preceding word does not lean on the next one.
    floor = max(1, max_words // 2)
    for k in range(max_words, floor, -1):
        word = buf[complete[k][0] : complete[k][1]].lower().strip(",.;:")
        if word in _BREATH_WORDS:
            return complete[k][0]
    # Then any break whose preceding word does not lean on the next one, in the window
    # or, failing that, earlier: a shorter opener beats stranding "Dr." from "Smith".
    for k in [*range(max_words, floor - 1, -1), *range(floor - 1, 0, -1)]:
        prev, nxt = (buf[complete[i][0] : complete[i][1]] for i in (k - 1, k))
        if _breakable(prev, nxt):
            return complete[k][0]
    return complete[max_words][0]


def _long_word_cut(buf: str, max_word_chars: int) -> int | None:
    """Cut inside a run of non-space characters longer than ``max_word_chars``."""
    for m in re.finditer(r"\S+", buf):
        if m.end() - m.start() > max_word_chars:
            return m.start() + max_word_chars if m.start() == 0 else m.start()
    return None


def _last_word_break(head: str) -> int | None:
    spaces = [m.start() for m in re.finditer(r" ", head)]
    if not spaces or spaces[-1] == 0:
        return None
    for s in reversed(spaces[-6:]):
        nxt = head[s + 1 :].split(" ", 1)[0].lower()
        if nxt in _BREATH_WORDS and s >= len(head) // 2:
            return s
    return spaces[-1]
