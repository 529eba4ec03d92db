"""The simulated callers: what they say, how they send it (whole replies or LLM token
pieces, over the daemon's TCP protocol), and the real-time player that turns the audio
frames' arrival times into time to first audio and stalls."""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.lib.harness import Daemon
from kokoro_service.text.segmenter import Segmenter, SegmenterConfig
from kokoro_service.wire.client import Connection
from kokoro_service.wire.codec import SAMPLE_RATE

TEXT_ONE = "Sure, I can help you reschedule your appointment for next Tuesday."
TEXT_THREE = (
    "Thanks for calling Acme Dental, this is Sarah. I can see your appointment on Tuesday "
    "at 3:30 PM with Doctor Patel. Would you like to keep that time, or should I find you "
    "a new slot?"
)
# Short, complete utterances for the memory soak; each must segment fully on push().
# No commas: one segment each whether or not the daemon sees it as an utterance start.
# The WER phase's corpus: everyday phone content of a voice agent, none of it in the test
# suite's corpus, so the benchmark does not score what the tests were tuned on.
WER_SENTENCES = (
    "Good morning, you have reached Riverside Veterinary Clinic.",
    "Your table for four is booked for Saturday at seven in the evening.",
    "I have moved your delivery to Thursday between noon and three.",
    "The technician will arrive at your house tomorrow morning.",
    "Can I have the last four digits of your account number, please?",
    "Your refund of forty two dollars has been sent to your card.",
    "We are closed on Sunday, but you can leave a message after the tone.",
    "Please stay on the line and a nurse will be with you shortly.",
    "Your flight to Denver is delayed by about forty minutes.",
    "I can book you with Doctor Lee on Friday afternoon instead.",
    "The pharmacy closes at nine tonight and opens at eight tomorrow.",
    "Would you like me to send the confirmation by text message?",
    "Your car is ready, and the total comes to one hundred and ten dollars.",
    "I am sorry, that time is taken. How about half past two?",
    "Your package was left at the front door this afternoon.",
    "Please bring your insurance card and a photo ID to the visit.",
    "The store on Oak Avenue has three of them in stock today.",
    "I will transfer you to billing now. Thank you for waiting.",
    "Your new password has been sent to the email we have on file.",
    "Is there anything else I can help you with today?",
)
MEMORY_TEXTS = (
    "Okay.",
    "Got it thanks.",
    "One moment please.",
    "Yes that works.",
    "Thank you.",
    "Sure thing.",
    "Let me check.",
    "Goodbye.",
)
CANCEL_TEXT = " ".join([TEXT_THREE] * 3)
MARKER_TEXT = "Okay."


class Call:
    """One text connection used by the benchmark; arrival times are ``time.monotonic``."""

    _ids = iter(range(1, 1 << 62))
    _ids_lock = threading.Lock()

    def __init__(self, daemon: Daemon, prefix: str, timeout: float = 120.0) -> None:
        with Call._ids_lock:
            self.call_id = f"{prefix}-{os.getpid()}-{next(Call._ids)}"
        self.conn = Connection(daemon.host, daemon.port, timeout=timeout)
        self.conn.hello(self.call_id)

    @property
    def arrivals(self) -> list[float]:
        return self.conn.reply.arrivals

    @property
    def n_chunks(self) -> int:
        return len(self.conn.reply.chunks)

    def chunk_seconds(self) -> list[float]:
        return [len(c.samples) / 4 / SAMPLE_RATE for c in self.conn.reply.chunks]

    def text(self, text: str) -> float:
        """Send one TEXT frame; return the time its last byte was handed to the kernel."""
        self.conn.text(text)
        return time.monotonic()

    def wait_chunks(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.n_chunks < count:
            left = deadline - time.monotonic()
            if left <= 0 or self.conn.reply.closed:
                return False
            self.conn.read_some(min(0.05, left))
        return True

    def wait_end(self, timeout: float) -> bool:
        """Read until END (not until the daemon's close, which lingers for our close)."""
        deadline = time.monotonic() + timeout
        while not self.conn.reply.ended:
            left = deadline - time.monotonic()
            if left <= 0 or self.conn.reply.closed:
                return False
            self.conn.read_some(min(0.25, left))
        return True

    def quiet_for(self, gap: float, since: float, timeout: float) -> None:
        """Read until no frame has arrived for ``gap`` seconds (counting from ``since``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.conn.reply.closed:
            last = max([since, *self.arrivals[-1:]])
            if time.monotonic() - last >= gap:
                return
            self.conn.read_some(0.05)

    def finish(self, *, cancel: bool = False, timeout: float = 120.0) -> bool:
        """Optionally cancel, send BYE, read to END and close; True if END came."""
        try:
            if cancel:
                self.conn.control(cancel=True)
            self.conn.bye()
            return self.wait_end(timeout)
        finally:
            self.conn.close()


def token_pieces(text: str, seed: int = 7) -> list[str]:
    """``text`` cut into 3-6 character pieces, deterministically, as an LLM streams it."""
    rng = random.Random(seed)
    out: list[str] = []
    i = 0
    while i < len(text):
        n = rng.randint(3, 6)
        out.append(text[i : i + n])
        i += n
    return out


def first_segment(cfg: SegmenterConfig, pieces: Sequence[str]) -> tuple[str, int]:
    """The first segment the daemon sends for ``pieces`` and the index of the piece that
    completes it (``len(pieces)`` when only the final flush releases it)."""
    seg = Segmenter(cfg)
    for i, piece in enumerate(pieces):
        out = seg.push(piece)
        if out:
            return out[0], i
    return seg.flush()[0], len(pieces)


def all_segments(cfg: SegmenterConfig, text: str) -> list[str]:
    seg = Segmenter(cfg)
    return seg.push(text) + seg.flush()


@dataclass
class Playback:
    ttfa: float
    stalls: int
    stall_s: float
    max_stall_s: float
    audio_s: float
    ended: bool


def playback(sent: float, arrivals: Sequence[float], seconds: Sequence[float]) -> Playback:
    """A real-time player that starts at the first frame; a frame arriving after the player
    ran dry is a stall, and the player resumes when it arrives."""
    if not arrivals:
        return Playback(math.nan, 0, 0.0, 0.0, 0.0, False)
    start = arrivals[0]
    played = seconds[0]
    stalls, stall_s, worst = 0, 0.0, 0.0
    for arrival, dur in zip(arrivals[1:], seconds[1:], strict=True):
        dry_at = start + played + stall_s
        if arrival > dry_at:
            stalls += 1
            stall_s += arrival - dry_at
            worst = max(worst, arrival - dry_at)
        played += dur
    return Playback(arrivals[0] - sent, stalls, stall_s, worst, sum(seconds), True)
