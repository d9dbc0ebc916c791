"""Codes not sent: files that send only the first steps (--send-steps), files cut short
(--progressive, decode --partial), and what fills in the rest. The claims attacked here: the
decoder fills in exactly what the encoder filled in (the codes CRC checks it), a prefix gives
the same image as the file that sends that many steps, every prefix and every hostile header
field either decodes to an image of the stated size or raises BitstreamError."""

import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import photo_crop
from pqmim import BitstreamError
from pqmim import format as fmt
from pqmim.entropy.replay import fill_symbols
from pqmim.entropy.schedule import reveal_groups, window_boxes

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def rgb():
    return photo_crop(120, 60, 150, 100)  # 3 x 2 windows of the tiny model's latent grid


@pytest.fixture(scope="module")
def full_codes(tiny_codec, rgb):
    return tiny_codec.encode_codes([rgb])[0]


def sent_mask(codec, codes: torch.Tensor, sent: int) -> torch.Tensor:
    """(h, w) True where the position is coded in one of the first `sent` steps."""
    cfg = codec.cfg
    _, h, w = codes.shape
    mask = torch.zeros(h, w, dtype=torch.bool)
    for y0, x0, hh, ww in window_boxes(h, w, cfg.window):
        for g in reveal_groups(hh, ww, cfg.window, cfg.steps, cfg.alpha)[:sent]:
            mask[y0 + g // cfg.window, x0 + g % cfg.window] = True
    return mask


@pytest.mark.parametrize("seed", [None, 7])
def test_send_steps_round_trip(tiny_codec, rgb, full_codes, seed):
    steps = tiny_codec.cfg.steps
    whole = tiny_codec.compress(rgb)
    sizes = []
    for sent in range(1, steps):
        data = tiny_codec.compress(rgb, send_steps=sent, seed=seed)
        header, _ = fmt.unpack(data)
        assert (header.sent, header.fill) == (sent, 0 if seed is None else seed + 1)
        _, codes = tiny_codec.read_codes(data)  # the codes CRC covers the filled-in codes
        keep = sent_mask(tiny_codec, codes, sent)
        assert torch.equal(codes[:, keep], full_codes[:, keep])  # what was sent is exact
        image = tiny_codec.decompress(data)
        assert image.size == (rgb.shape[1], rgb.shape[0])
        assert np.array_equal(np.asarray(image), np.asarray(tiny_codec.decompress(data)))
        sizes.append(len(data))
    assert sizes == sorted(sizes) and sizes[-1] < len(whole)
    assert tiny_codec.compress(rgb, send_steps=steps) == whole  # all steps: the plain file


def test_seeds_fill_in_differently_and_reproducibly(tiny_codec, rgb):
    a, b = (tiny_codec.compress(rgb, send_steps=1, seed=s) for s in (1, 2))
    ca, cb = tiny_codec.read_codes(a)[1], tiny_codec.read_codes(b)[1]
    assert not torch.equal(ca, cb)
    assert torch.equal(ca, tiny_codec.read_codes(tiny_codec.compress(rgb, send_steps=1, seed=1))[1])


def test_fill_symbols_draw_from_the_table():
    """Seeded draws follow the integer table; fill 0 picks the most likely code (lowest on ties)."""
    table = np.array([1, 2, 5, 0.0, 8, 8], dtype=np.float32) * 1000 + 1
    rows = np.tile(table, (4000, 1))
    where = [(t, np.arange(250)) for t in range(8)]  # 8 windows x 250 positions x m=2
    got = np.bincount(fill_symbols(rows, where, 2, 16, fill=3), minlength=6) / len(rows)
    assert np.abs(got - table / table.sum()).max() < 0.03
    assert set(fill_symbols(rows, where, 2, 16, fill=0)) == {4}
    assert not np.array_equal(fill_symbols(rows, where, 2, 16, fill=3), fill_symbols(rows, where, 2, 16, fill=4))


def test_filled_pixels_do_not_depend_on_threads(tiny_codec, rgb):
    data = tiny_codec.compress(rgb, send_steps=2)
    n = torch.get_num_threads()
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        outs.append(np.asarray(tiny_codec.decompress(data)))
    torch.set_num_threads(n)
    assert np.array_equal(*outs)


def test_every_prefix_of_a_progressive_file(tiny_codec, rgb):
    data = tiny_codec.compress(rgb, progressive=True)
    header, payload = fmt.unpack(data)
    assert data[: len(data) - len(payload) - 4] != data  # header + table, then payload
    assert tiny_codec.decompress(data).tobytes() == tiny_codec.decompress(tiny_codec.compress(rgb)).tobytes()
    start = len(data) - len(payload) - 4
    for n in range(start + header.step_bytes[0]):  # cut inside the header or the first step: nothing to show yet
        with pytest.raises(BitstreamError):
            tiny_codec.decompress(data[:n], partial=True)
    by_steps = {}
    for n in range(start + header.step_bytes[0], len(data) + 1):
        k = header.steps_in(n - start)
        image = np.asarray(tiny_codec.decompress(data[:n], partial=True))
        assert image.shape == rgb.shape
        by_steps.setdefault(k, image)
        assert np.array_equal(by_steps[k], image)  # only whole steps count
    assert sorted(by_steps) == list(range(1, tiny_codec.cfg.steps + 1))
    for k, image in by_steps.items():  # a prefix of k steps looks like the file that sends k
        assert np.array_equal(image, np.asarray(tiny_codec.decompress(tiny_codec.compress(rgb, send_steps=k))))


def test_partial_decoding_with_a_seed_matches_the_seeded_file(tiny_codec, rgb):
    data = tiny_codec.compress(rgb, progressive=True)
    header, payload = fmt.unpack(data)
    cut = data[: len(data) - len(payload) - 4 + header.step_bytes[1]]
    got = tiny_codec.read_codes(cut, partial=True, seed=3)[1]
    assert torch.equal(got, tiny_codec.read_codes(tiny_codec.compress(rgb, send_steps=2, seed=3))[1])


def test_cut_files_need_the_progressive_table(tiny_codec, rgb):
    data = tiny_codec.compress(rgb)
    with pytest.raises(BitstreamError, match="--progressive"):
        tiny_codec.decompress(data[:-10], partial=True)
    with pytest.raises(BitstreamError, match="checksum"):  # without partial a cut file is refused
        tiny_codec.decompress(tiny_codec.compress(rgb, progressive=True)[:-10])


def test_progressive_table_costs_about_a_byte_per_step(tiny_codec, rgb):
    plain, prog = tiny_codec.compress(rgb), tiny_codec.compress(rgb, progressive=True)
    assert 0 < len(prog) - len(plain) <= 6 + 2 * tiny_codec.cfg.steps
    assert fmt.unpack(prog)[1] == fmt.unpack(plain)[1]  # the same payload


def test_send_files_are_refused_by_a_decoder_that_cannot_fill_in(tiny_codec, rgb, monkeypatch):
    data = tiny_codec.compress(rgb, send_steps=1)
    monkeypatch.setattr(fmt, "KNOWN_CHUNKS", (b"ICCP", b"EXIF", b"ALPH", fmt.PROG))  # as 0.3.0 reads them
    with pytest.raises(BitstreamError, match="needs chunk SEND"):
        fmt.unpack(data)


def test_bad_arguments(tiny_codec, rgb):
    for bad in (
        0,
        -1,
        tiny_codec.cfg.steps + 1,
    ):  # at least the first step is sent: see test_a_header_alone_cannot_make_the_decoder_generate
        with pytest.raises(ValueError, match="send_steps"):
            tiny_codec.compress(rgb, send_steps=bad)
    with pytest.raises(ValueError, match="seed"):
        tiny_codec.compress(rgb, seed=1)  # nothing to fill in
    with pytest.raises(ValueError, match="seed"):
        tiny_codec.compress(rgb, send_steps=1, seed=-1)


# -- hostile files


def test_a_header_alone_cannot_make_the_decoder_generate(tiny_codec, rgb, monkeypatch):
    """A file that sent nothing would make a few bytes decode (generate) an image of any size
    the header claims (the fuzz campaign found a 36-byte file that took 53 s and 3 GB): the
    first step must be in the payload, where the information budget stops a lying header."""
    data = tiny_codec.compress(rgb, send_steps=1)
    header, payload = fmt.unpack(data)
    crafted = rebuilt(data, [(fmt.SEND, fmt._put_varint(0) + fmt._put_varint(0))])  # nothing sent
    with pytest.raises(BitstreamError, match="SEND chunk says 0 steps"):
        tiny_codec.decompress(crafted)
    huge = fmt.Header(header.model_id, 8000, 8000, header.steps, header.shift, header.codes_crc, (), 1, 0, arithmetic=header.arithmetic)
    body = fmt.pack(huge, payload)
    from pqmim.entropy import replay

    calls = []
    real = replay.Replayer._piece_logits
    monkeypatch.setattr(replay.Replayer, "_piece_logits", lambda self, piece, *a: calls.append(1) or real(self, piece, *a))
    with pytest.raises(BitstreamError, match="payload too short|cannot be decoded"):
        tiny_codec.decompress(body)
    assert len(calls) <= replay.WINDOWS_PER_CALL  # refused in the first call of step 1
    prog = tiny_codec.compress(rgb, progressive=True)
    header, payload = fmt.unpack(prog)
    with pytest.raises(BitstreamError, match="before its first coding step"):
        tiny_codec.decompress(prog[: len(prog) - len(payload) - 4 + header.step_bytes[0] - 1], partial=True)


def with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def rebuilt(data: bytes, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """`data` (a version-3 file) with its chunk section replaced, CRC recomputed."""
    header, payload = fmt.unpack(data)
    fixed = fmt.pack(
        fmt.Header(
            header.model_id, header.width, header.height, header.steps, header.shift, header.codes_crc, arithmetic=header.arithmetic
        ),
        b"",
    )[:-4]
    fixed = fixed[:3] + bytes([fmt.VERSION_CHUNKS]) + fixed[4:]
    section = fmt._put_varint(len(chunks)) + b"".join(t + fmt._put_varint(len(d)) + d for t, d in chunks)
    return with_crc(fixed + section + payload)


def decode_or_reject(codec, data: bytes, partial: bool = False) -> str:
    try:
        header, _, _ = fmt.unpack_partial(data) if partial else (*fmt.unpack(data), True)
        image = codec.decompress(data, partial=partial)
    except BitstreamError as e:
        assert str(e)
        return "rejected"
    assert image.size == (header.width, header.height)
    return "decoded"


@FAST
@given(
    sent=st.integers(0, 300), fill=st.integers(0, 1 << 36), tail=st.binary(max_size=3), steps=st.lists(st.integers(0, 1 << 20), max_size=10)
)
def test_lying_send_and_prog_chunks(tiny_codec, rgb, sent, fill, tail, steps):
    data = tiny_codec.compress(rgb, send_steps=2, progressive=True)
    send = fmt._put_varint(sent) + fmt._put_varint(fill) + tail
    prog = b"".join(fmt._put_varint(n) for n in steps)
    outcome = decode_or_reject(tiny_codec, rebuilt(data, [(fmt.SEND, send), (fmt.PROG, prog)]))
    if outcome == "decoded":  # only the encoder's own values decode: the codes CRC holds them to it
        assert (sent, fill, tail) == (2, 0, b"")


@FAST
@given(cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=3))
def test_hostile_prefixes_decode_to_an_image_or_are_refused(tiny_codec, rgb, cut, flips):
    data = bytearray(tiny_codec.compress(rgb, progressive=True, send_steps=tiny_codec.cfg.steps - 1)[: cut % 900])
    for where, x in flips:
        if data:
            data[where % len(data)] ^= x
    decode_or_reject(tiny_codec, bytes(data), partial=True)
