"""Key-value documents: short records of "Field: value" facts, queried by field.

A synthetic stand-in for the paper's information-extraction tasks (FDA, SWDE): each document is a
handful of facts written in varied phrasing ("Hometown: Oslo", "paint = teal", "The founded is
1987."), and the question asks for one field ("What is the hometown?"). Fields come in families
that share a value pool (hometown / birthplace / office are all cities), so the other members of
the family are distractors a model can only rule out by reading the field name.

The answer to a question is the value written next to its field in the document, so answers are
correct by construction. Text is plain ASCII: with the byte-level tokenizer every character is one
token. Prompts are laid out by :class:`jrt_prompt.prompts.JRTPrompt`, the same templater ``jrt run``
and ``jrt eval`` use, so a model trained here sees at inference exactly what it saw in training.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import JRTError
from ..prompts import JRTPrompt
from .batch import IGNORE, TokenBatch, stack_rows
from .forms import PromptForm

_CITIES = [
    "Oslo",
    "Lima",
    "Paris",
    "Cairo",
    "Dublin",
    "Quito",
    "Riga",
    "Tokyo",
    "Austin",
    "Lisbon",
    "Perth",
    "Seoul",
    "Turin",
    "Hanoi",
    "Kyiv",
    "Boston",
    "Delhi",
    "Minsk",
    "Nairobi",
    "Porto",
    "Sofia",
    "Vienna",
    "Zagreb",
    "Bergen",
    "Leeds",
    "Lyon",
    "Malmo",
    "Dakar",
]
_COLORS = [
    "red",
    "blue",
    "green",
    "teal",
    "amber",
    "black",
    "white",
    "olive",
    "coral",
    "ivory",
    "navy",
    "plum",
    "gold",
    "gray",
    "pink",
    "rust",
    "sand",
    "mint",
    "lilac",
    "cyan",
]
_FIRST = [
    "Ada",
    "Bruno",
    "Carla",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Kira",
    "Luis",
    "Mira",
    "Nils",
    "Olga",
    "Pablo",
    "Rosa",
    "Sven",
    "Tara",
    "Umar",
    "Vera",
    "Wim",
    "Yara",
    "Zane",
]
_LAST = [
    "Novak",
    "Silva",
    "Berg",
    "Okafor",
    "Tanaka",
    "Moreau",
    "Kowal",
    "Haddad",
    "Larsen",
    "Rossi",
    "Singh",
    "Weber",
    "Costa",
    "Ivanov",
    "Nakamura",
    "Fischer",
    "Lopez",
    "Meyer",
    "Park",
    "Quinn",
]
_JOBS = [
    "baker",
    "pilot",
    "nurse",
    "judge",
    "welder",
    "tailor",
    "farmer",
    "clerk",
    "chemist",
    "plumber",
    "painter",
    "dentist",
    "sailor",
    "miner",
    "cook",
    "editor",
]
_FRUITS = [
    "apple",
    "mango",
    "plum",
    "lemon",
    "kiwi",
    "peach",
    "grape",
    "melon",
    "lime",
    "fig",
    "pear",
    "guava",
]
_ANIMALS = [
    "otter",
    "heron",
    "lynx",
    "bison",
    "gecko",
    "panda",
    "raven",
    "moose",
    "koala",
    "tapir",
    "eagle",
    "zebra",
    "camel",
    "llama",
]
_YEARS = [str(y) for y in range(1950, 2030)]
_NUMBERS = [str(n) for n in range(2, 100)]

# family name -> (its fields, the value pool they share). Fields of a family share a value pool,
# so the others are distractors; each field is one word and siblings end differently, so the
# field can be told from its last characters (a small byte-level model can learn that).
FIELD_FAMILIES: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "city": (("hometown", "birthplace", "office"), _CITIES),
    "color": (("color", "paint", "tint"), _COLORS),
    "name": (("name", "alias"), _FIRST),
    "surname": (("surname",), _LAST),
    "job": (("job", "hobby"), _JOBS),
    "fruit": (("fruit", "snack"), _FRUITS),
    "animal": (("animal", "mascot"), _ANIMALS),
    "year": (("year", "founded", "deadline"), _YEARS),
    "number": (("room", "gate", "floor"), _NUMBERS),
    "code": (("code", "ticket"), []),  # values generated: two letters, digit, dash, two digits
}
FIELD_TO_FAMILY = {field: family for family, (fields, _) in FIELD_FAMILIES.items() for field in fields}
ALL_FIELDS = tuple(FIELD_TO_FAMILY)

# The open vocabulary of field names (``field_names="open"``): the family fields plus 158 nouns.
# A document draws its fields from all of them and each field's value from a random family's
# pool, so what a field holds cannot be learned as a fixed slot: a model must bind each value to
# the name written next to it in this document (associative recall), and a small recurrent state
# can only keep some of a long record unless it knows, from a question read first, which to keep.
_OPEN_NOUNS = """
anchor badge banner barn basin beacon bell bench berth bridge bucket cabin canal candle canyon
cargo carpet castle cellar chapel charm chimney cipher circuit cliff clock cloak clover comet
compass cottage crane crater crest crown current curtain dagger depot desk dock domain dune easel
echo emblem engine estate fabric falcon fence ferry fiddle forge fountain fossil frame galley
garden garnet gazebo glacier globe grove guild hammer harbor harvest hatch haven helmet herald hill
hollow horizon island ivory jacket jetty kettle kiln lagoon lantern ledger lever locket lodge loom
magnet manor mantle market meadow medal mentor mill mirror monument mosaic motto nest oasis orbit
orchard paddle palace parcel pasture pavilion pebble pennant pier pillar pilot plaza pocket portal
pottery prism pulley quarry quill radar raft ranch relic ribbon ridge rocket saddle satchel scroll
shelter shield signal sketch sleeve spire spring stable statue summit tavern temple thicket tower
trail tunnel turret valley vault velvet village voyage wagon wharf window workshop
""".split()
OPEN_FIELDS = ALL_FIELDS + tuple(w for w in _OPEN_NOUNS if w not in FIELD_TO_FAMILY)
FIELD_NAME_MODES = ("families", "open")

# Phrasings of one fact; {F} is the capitalised field name.
PHRASINGS = ("{F}: {v}", "{f} = {v}", "The {f} is {v}.", "{F} - {v}")
QUESTION = "What is the {f}?"


@dataclass(frozen=True)
class KVDocument:
    title: str
    facts: tuple[tuple[str, str], ...]  # (field, value) in document order
    text: str

    def value(self, field: str) -> str:
        for f, v in self.facts:
            if f == field:
                return v
        raise KeyError(field)


def question_for(field: str) -> str:
    return QUESTION.format(f=field)


def _code(rng: random.Random) -> str:
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
    return f"{rng.choice(letters)}{rng.choice(letters)}{rng.randint(1, 9)}-{rng.randint(10, 99)}"


def make_document(rng: random.Random, num_fields: int, field_names: str = "families") -> KVDocument:
    """One document of ``num_fields`` facts with distinct fields and distinct values per pool.

    ``field_names="families"``: fields from :data:`FIELD_FAMILIES`, siblings of a family side by
    side as distractors (a fixed set of 25 names). ``"open"``: fields drawn from
    :data:`OPEN_FIELDS`; a family field takes a value of its family, any other name a value
    from a random family's pool.
    """
    if field_names not in FIELD_NAME_MODES:
        raise JRTError(f"field_names={field_names!r} is unknown: use one of {', '.join(FIELD_NAME_MODES)}")
    names = ALL_FIELDS if field_names == "families" else OPEN_FIELDS
    if not 2 <= num_fields <= len(names):
        raise JRTError(f"num_fields={num_fields} is invalid: use 2..{len(names)}")
    if field_names == "families":
        # Start from a few families and take several fields of each, so siblings (distractors) appear.
        families = list(FIELD_FAMILIES)
        rng.shuffle(families)
        fields: list[str] = []
        for family in families:
            members = list(FIELD_FAMILIES[family][0])
            rng.shuffle(members)
            fields.extend(members[: rng.randint(1, len(members))])
            if len(fields) >= num_fields:
                break
        fields = fields[:num_fields]
        rng.shuffle(fields)
        pools = [FIELD_TO_FAMILY[field] for field in fields]
    else:
        fields = rng.sample(names, num_fields)
        # a family field keeps its family's values; any other name takes a random family's
        pools = [FIELD_TO_FAMILY.get(field) or rng.choice(list(FIELD_FAMILIES)) for field in fields]
    used: dict[str, set[str]] = {}
    facts = []
    for field, family in zip(fields, pools, strict=True):
        pool = FIELD_FAMILIES[family][1]
        taken = used.setdefault(family, set())
        while True:
            value = _code(rng) if not pool else rng.choice(pool)
            if value not in taken:
                break
        taken.add(value)
        facts.append((field, value))
    title = f"Record {rng.randint(1, 999)}"
    lines = [title]
    for field, value in facts:
        lines.append(rng.choice(PHRASINGS).format(F=field[0].upper() + field[1:], f=field, v=value))
    return KVDocument(title, tuple(facts), "\n".join(lines))


def template_for(form: PromptForm) -> JRTPrompt:
    return JRTPrompt(repeat=form.repeat, question_first=form.question_first_flag)


def kv_docs_examples(
    n: int, seed: int, *, min_fields: int = 4, max_fields: int = 6, field_names: str = "families"
) -> list[dict]:
    """``n`` held-out style examples: ``{"context", "question", "answers"}`` (answers: a list of one value).

    Deterministic in ``seed``; documents as :func:`make_document` writes them. The prompt to show a model is ``JRTPrompt(...).render(context, question)``;
    a correct model continues it with ``" " + answer`` and a newline.
    """
    if n < 0:
        raise JRTError(f"n={n} is invalid: ask for zero or more examples")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        doc = make_document(rng, rng.randint(min_fields, max_fields), field_names)
        field, value = rng.choice(doc.facts)
        out.append({"context": doc.text, "question": question_for(field), "answers": [value]})
    return out


def kv_docs_shared_examples(
    documents: int,
    questions: int,
    seed: int,
    *,
    min_fields: int = 4,
    max_fields: int = 6,
    field_names: str = "families",
) -> list[dict]:
    """Rows that share documents: ``documents`` documents drawn as :func:`kv_docs_examples` draws
    them, each asked ``questions`` distinct fields (at most its number of fields), one row per
    question, the rows of a document next to each other (``id`` = ``"d<doc>-q<question>"``)."""
    if documents < 0 or questions < 1:
        raise JRTError(
            f"documents={documents}, questions={questions} are invalid: ask for >= 0 documents and >= 1 question"
        )
    rng = random.Random(seed)
    out = []
    for d in range(documents):
        doc = make_document(rng, rng.randint(min_fields, max_fields), field_names)
        for q, (field, value) in enumerate(rng.sample(list(doc.facts), min(questions, len(doc.facts)))):
            out.append(
                {"id": f"d{d}-q{q}", "context": doc.text, "question": question_for(field), "answers": [value]}
            )
    return out


def write_jsonl(examples: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise JRTError(
            f"kv-docs file {path} does not exist: pass a JSONL file of context/question/answers rows"
        )
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JRTError(f"{path}:{i} is not valid JSON ({exc.msg}): fix or remove the line") from None
        if not isinstance(row, dict) or not {"context", "question", "answers"} <= set(row):
            raise JRTError(f"{path}:{i} lacks context/question/answers: each row needs all three")
        rows.append(row)
    return rows


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


@dataclass(frozen=True)
class KVDocsTask:
    """Byte-level training/eval batches of key-value documents.

    Each training row renders one question with :class:`JRTPrompt` in the row's form, answers it,
    then asks ``num_queries - 1`` more questions about the same document, each on its own line and
    answered (teacher-forced); every answer (with its leading space and final newline) is scored.
    Evaluation rows have one question, exactly the layout ``jrt eval`` shows a model.

    ``questions_up_front="all"``: in the question-first and JRT forms the leading line lists all
    of the row's questions, so every answer of a training row rewards keeping what was asked for
    (with only the first question up front, the others still require keeping every fact). The
    one-question rows of evaluation are the same either way.
    """

    num_queries: int = 4
    min_fields: int = 4
    max_fields: int = 6
    field_names: str = "families"  # or "open": see make_document
    questions_up_front: str = "first"  # training rows of the question-first forms: "first" or "all"
    name: str = "kv-docs"

    def __post_init__(self):
        if self.questions_up_front not in ("first", "all"):
            raise JRTError(f"questions_up_front={self.questions_up_front!r} is unknown: use first or all")
        if self.field_names not in FIELD_NAME_MODES:
            raise JRTError(
                f"field_names={self.field_names!r} is unknown: use one of {', '.join(FIELD_NAME_MODES)}"
            )

    vocab_size = 258  # byte-level tokenizer: 256 bytes, EOS, PAD
    pad_id = 257

    def variants(self) -> tuple[str, ...]:
        return ("",)

    def row(self, doc: KVDocument, fields: list[str], form: PromptForm):
        first = question_for(fields[0])
        text = template_for(form).render(doc.text, first)
        if form.question_first_flag and self.questions_up_front == "all" and len(fields) > 1:
            # The leading question line lists every question of the row (the prompt starts with
            # the first question, so this only extends that line).
            text = " ".join(question_for(f) for f in fields) + text[len(first) :]
        spans = []
        for i, field in enumerate(fields):
            if i:
                text += question_for(field)  # the previous answer ended the line
            answer = " " + doc.value(field) + "\n"
            spans.append((len(text), len(text) + len(answer)))
            text += answer
        ids = torch.tensor(_bytes(text), dtype=torch.long)  # ASCII: character index == byte index
        targets = torch.full_like(ids, IGNORE)
        groups = torch.full_like(ids, -1)
        for g, (s, e) in enumerate(spans):
            targets[s - 1 : e - 1] = ids[s:e]
            groups[s - 1 : e - 1] = g
        return ids, targets, groups

    def _rows(self, rng: random.Random, n: int, forms, num_queries: int):
        rows = []
        for i in range(n):
            doc = make_document(rng, rng.randint(self.min_fields, self.max_fields), self.field_names)
            fields = [f for f, _ in doc.facts]
            rng.shuffle(fields)
            rows.append(self.row(doc, fields[: min(num_queries, len(fields))], forms[i % len(forms)]))
        return rows

    def sample(
        self, batch_size: int, generator: torch.Generator, form: PromptForm, variant: str = ""
    ) -> TokenBatch:
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return stack_rows(self._rows(rng, batch_size, [form], 1), self.pad_id)

    def sample_mixture(self, batch_size: int, generator: torch.Generator, forms) -> TokenBatch:
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return stack_rows(self._rows(rng, batch_size, list(forms), self.num_queries), self.pad_id)
