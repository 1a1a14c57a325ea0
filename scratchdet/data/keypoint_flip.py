"""Which keypoints trade names under a horizontal flip: the flip map of Keypoint R-CNN training (and any keypoint flip).

Mirroring an image puts a person's left eye where a right eye would be, so the flipped sample must call it the
right eye; a flip that only mirrors x teaches the model that left and right are one part, and keypoint AP on the
unflipped test images suffers (Detectron: utils/keypoints.py, flip_keypoints with the map of get_keypoints). The pairs
come, in this order, from

1. the explicit pairs of `data.keypoint_flip_map` ([[name_a, name_b], ...]; [name, name] says a name has no mirror);
2. recognised spellings of a side: the word "left"/"right" as a token anywhere in the name (left_eye, left-eye,
   leftEye, LeftEye, eye_left, eyeLeft, EyeLeft, hand_left_thumb) or the letter "l"/"r" as a token of its own
   anywhere (l_eye, L_shoulder, LShoulder as OpenPose writes it, eye_l, eye_R, thumb_L_tip, hand.L.001 as Blender
   writes it, or just "L" and "R"), except beside digits alone (L1..L5, lumbar vertebrae). Names are cut into
   tokens at separators (_ - . space :) and case changes; two names pair when their tokens agree, case aside,
   except for the side token, which must sit at the same place and name the other side;
3. every other name maps to itself, unless it still looks lateral: it contains "left"/"right" inside a word
   (leftfoot), has a side token but no partner (left_paw without right_paw) or several, or differs from another
   name only in a first or last letter l <-> r (lhip, rhip), or in such a letter of one token (FL_foot, FR_foot:
   front left/right). Those are refused: any guess could teach the wrong side.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from scratchdet.errors import ConfigError

_SEPARATORS = "_-. :/"
_SIDE_WORDS = {"left": "L", "right": "R"}
_SIDE_LETTERS = {"l": "L", "r": "R"}


class UnpairedKeypointsError(ValueError):
    """Keypoint names that look lateral but have no recognisable mirror; `names` lists them."""

    def __init__(self, message: str, names: Sequence[str]):
        super().__init__(message)
        self.names = list(names)


def name_tokens(name: str) -> list[str]:
    """Splits a keypoint name at separators and case changes: "LShoulder" -> ["L", "Shoulder"], "eye_left" ->
    ["eye", "left"], "leftEye2" -> ["left", "Eye", "2"]. Case is kept."""
    tokens: list[str] = []
    for part in "".join(" " if c in _SEPARATORS else c for c in name).split():
        current = part[0]
        for prev, ch, nxt in zip(part[:-1], part[1:], part[2:] + " ", strict=False):
            boundary = (
                (ch.isupper() and (prev.islower() or prev.isdigit()))  # eyeLeft, thumb2Tip
                or (ch.isupper() and prev.isupper() and nxt.islower())  # LShoulder: L | Shoulder
                or (ch.isdigit() != prev.isdigit())  # thumb2 -> thumb | 2
            )
            if boundary:
                tokens.append(current)
                current = ""
            current += ch
        tokens.append(current)
    return tokens


def _side(tokens: list[str]) -> tuple[str, int] | None:
    """The side ("L"/"R") a name's tokens name, and the side token's position; None if none or ambiguous."""
    lowered = [t.lower() for t in tokens]
    words = [(i, _SIDE_WORDS[t]) for i, t in enumerate(lowered) if t in _SIDE_WORDS]
    if len(words) == 1:
        return words[0][1], words[0][0]
    if words:
        return None
    if len(tokens) == 1:  # a name that is just "L" or "R"
        return (_SIDE_LETTERS[lowered[0]], 0) if lowered[0] in _SIDE_LETTERS else None
    if not any(t.isalpha() and t not in _SIDE_LETTERS for t in lowered):
        return None  # "L1", "L5": a vertebra (lumbar 1, 5), not a side
    letters = [(i, _SIDE_LETTERS[t]) for i, t in enumerate(lowered) if t in _SIDE_LETTERS]
    return (letters[0][1], letters[0][0]) if len(letters) == 1 else None


def looks_lateral(name: str, names: Sequence[str] = ()) -> bool:
    """True if `name` seems to name one side: a side token (see the module doc), "left"/"right" inside a word, or
    a twin in `names` that differs only in a first or last letter l <-> r (lhip / rhip)."""
    lowered = name.lower()
    if _side(name_tokens(name)) is not None or "left" in lowered or "right" in lowered:
        return True
    swap = {"l": "r", "r": "l", "L": "R", "R": "L"}
    if len(name) > 1 and name[0] in swap and swap[name[0]] + name[1:] in names:
        return True
    if len(name) > 1 and name[-1] in swap and name[:-1] + swap[name[-1]] in names:
        return True
    # A token that starts or ends with the side letter and has a twin with the other letter: FL_foot / FR_foot
    # (front left / front right, legged-robot naming), where the token itself names no side we can read.
    tokens = name_tokens(name)
    for i, token in enumerate(tokens):
        for j in {0, len(token) - 1}:
            if len(token) > 1 and token[j] in swap:
                twin = token[:j] + swap[token[j]] + token[j + 1 :]
                if _join_like(name, tokens, i, twin) in names:
                    return True
    return False


def _join_like(name: str, tokens: list[str], index: int, replacement: str) -> str:
    """`name` with its token `index` replaced, separators and all (tokens are contiguous substrings of it)."""
    start = 0
    for i, token in enumerate(tokens):
        start = name.index(token, start)
        if i == index:
            return name[:start] + replacement + name[start + len(token) :]
        start += len(token)
    return name


def check_flip_map(
    explicit: Sequence[Sequence[str]], names: Sequence[str] | None = None, where: str = ""
) -> list[tuple[str, str]]:
    """Validates data.keypoint_flip_map: two names per pair, each name in one pair at most, and (given `names`,
    the category's keypoints) only names the category declares. Returns the pairs as tuples.

    Raises:
        ConfigError: naming the pair or the name, and the category's keypoints.
    """
    pairs, seen = [], set()
    for entry in explicit:
        if len(entry) != 2 or not all(isinstance(n, str) for n in entry):
            raise ConfigError(
                f"{where}data.keypoint_flip_map entry {list(entry)} must be two keypoint names "
                "[name_a, name_b] ([name, name] for a keypoint without a mirror)"
            )
        unknown = [n for n in entry if names is not None and n not in names]
        if unknown:
            raise ConfigError(
                f"{where}data.keypoint_flip_map names {unknown}, which the category does not declare; "
                f"its keypoints are {list(names)}"
            )
        for n in dict.fromkeys(entry):
            if n in seen:
                raise ConfigError(
                    f"{where}data.keypoint_flip_map names {n!r} more than once; each keypoint may "
                    "appear in one pair only"
                )
            seen.add(n)
        pairs.append((entry[0], entry[1]))
    return pairs


def keypoint_flip_pairs(
    names: Sequence[str], explicit: Sequence[Sequence[str]] = (), where: str = ""
) -> list[tuple[str, str]]:
    """The keypoints that swap names under a horizontal flip, as (name_a, name_b) pairs with name_a != name_b.

    Args:
        names: the category's keypoint names (COCO "keypoints" field), unique.
        explicit: data.keypoint_flip_map pairs; they take precedence, and a name they list is not paired again.
        where: prefix for error messages, e.g. "file F, category 1 (person): ".

    Returns:
        Explicit pairs first, then recognised ones in the order of their first name; names in no pair map to
        themselves.

    Raises:
        ValueError: duplicate names.
        ConfigError: an explicit pair that is malformed, names an unknown keypoint, or repeats a name.
        UnpairedKeypointsError: names that look lateral but could not be paired (see the module doc).
    """
    if len(set(names)) != len(names):
        raise ValueError(f"{where}keypoint names must be unique, got {list(names)}")
    explicit_pairs = [p for p in check_flip_map(explicit, names, where) if p[0] != p[1]]
    paired = {n for entry in explicit for n in entry}
    groups: dict[tuple[str, ...], list[tuple[str, str]]] = defaultdict(list)
    for name in names:
        tokens = name_tokens(name)
        side = _side(tokens) if name not in paired else None
        if side is not None:  # the side token blanked out, at its place: left_eye and right_eye share ("", "eye")
            groups[tuple("" if i == side[1] else t.lower() for i, t in enumerate(tokens))].append((side[0], name))
    recognised = []
    for members in groups.values():
        if sorted(s for s, _ in members) == ["L", "R"]:  # one left and one right; anything else stays unpaired
            recognised.append(tuple(n for _, n in sorted(members)))
            paired.update(n for _, n in members)
    order = {n: i for i, n in enumerate(names)}
    recognised.sort(key=lambda pair: min(order[pair[0]], order[pair[1]]))
    unpaired = [n for n in names if n not in paired and looks_lateral(n, names)]
    if unpaired:
        raise UnpairedKeypointsError(
            f"{where}keypoints {unpaired} look like one side of the body but have no recognisable mirror, so a "
            f"horizontal flip would keep their side wrong; set data.keypoint_flip_map=[[name_a,name_b],...] to pair "
            f"them ([name,name] for a keypoint without a mirror). Keypoints: {list(names)}",
            unpaired,
        )
    return explicit_pairs + recognised


def flip_indices(names: Sequence[str], pairs: Sequence[tuple[str, str]]) -> list[int]:
    """flip[i] = index of the keypoint that keypoint i becomes after a horizontal flip (a permutation, involution)."""
    index = {n: i for i, n in enumerate(names)}
    flip = list(range(len(names)))
    for a, b in pairs:
        flip[index[a]], flip[index[b]] = index[b], index[a]
    return flip
