import pytest
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from jrt_prompt import JRTError, JRTPrompt, fit_prompt

CONTEXT = "The lease was signed by Alice Moreau on 3 May 2021 in Lyon."
QUESTION = "Who signed the lease?"


def test_plain_prompt_is_context_then_question():
    assert JRTPrompt.plain().render(CONTEXT, QUESTION) == f"{CONTEXT}\n{QUESTION}"
    assert JRTPrompt(repeat=1, question_first=False).render("C", "Q") == "C\nQ"


@pytest.mark.parametrize(
    ("repeat", "question_first", "expected"),
    [
        (1, False, "C\nQ"),
        (1, True, "Q\nC\nQ"),
        (2, False, "C\nC\nQ"),
        (2, True, "Q\nC\nC\nQ"),
        (3, False, "C\nC\nC\nQ"),
        (3, True, "Q\nC\nC\nC\nQ"),
    ],
)
def test_render_exact_strings(repeat, question_first, expected):
    assert JRTPrompt(repeat=repeat, question_first=question_first).render("C", "Q") == expected


def test_separator_and_answer_prefix():
    template = JRTPrompt(repeat=2, question_first=True, separator=" | ", answer_prefix=" Answer:")
    assert template.render("ctx", "q?") == "q? | ctx | ctx | q? Answer:"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_invalid_repeat(bad):
    with pytest.raises(JRTError, match="repeat"):
        JRTPrompt(repeat=bad)


@pytest.mark.parametrize("question", ["", "   ", "\n"])
def test_empty_question(question):
    with pytest.raises(JRTError, match="question is empty"):
        JRTPrompt().render(CONTEXT, question)


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A real byte-level BPE with merges, trained on a small corpus."""
    corpus = [
        "The lease was signed by Alice Moreau on 3 May 2021 in Lyon.",
        "Contracts are signed by tenants and landlords; the lease runs for three years.",
        "Who signed the lease? What is the rent? Where is the flat?",
    ] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=2, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")


def _copies_as_tokens(tokenizer, text, context, question, template):
    """Token ids covering each copy of ``context`` inside the rendered ``text``."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts, pos = [], 0
    if template.question_first:
        pos = len(question) + len(template.separator)
    for _ in range(template.repeat):
        starts.append(pos)
        pos += len(context) + len(template.separator)
    copies = []
    for start in starts:
        end = start + len(context)
        ids = [
            t
            for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
            if a >= start and b <= end and b > a
        ]
        crossing = [(a, b) for a, b in enc["offset_mapping"] if a < start < b or a < end < b]
        assert not crossing, "a token straddles the boundary of a context copy"
        copies.append(ids)
    return copies


@pytest.mark.parametrize("repeat", [1, 2, 3])
@pytest.mark.parametrize("budget", [20, 33, 47, 80])
def test_fit_keeps_question_and_equal_copies(bpe_tokenizer, repeat, budget):
    context = " ".join([CONTEXT] * 4)
    template = JRTPrompt(repeat=repeat, question_first=True)
    fitted = template.fit(context, QUESTION, bpe_tokenizer, budget)
    assert fitted.prompt_tokens <= budget
    assert len(bpe_tokenizer(fitted.text)["input_ids"]) == fitted.prompt_tokens
    assert fitted.text.startswith(QUESTION + "\n")
    assert fitted.text.endswith("\n" + QUESTION)
    assert fitted.text == template.render(fitted.context, QUESTION)
    assert context.startswith(fitted.context)
    full_length = len(bpe_tokenizer(template.render(context, QUESTION))["input_ids"])
    assert fitted.truncated == (full_length > budget)
    copies = _copies_as_tokens(bpe_tokenizer, fitted.text, fitted.context, QUESTION, template)
    assert all(c == copies[0] for c in copies)
    # The budget is used: one more context token per copy would not fit.
    more = template.render(
        bpe_tokenizer.decode(bpe_tokenizer(context)["input_ids"][: fitted.context_tokens + 1]), QUESTION
    )
    assert (
        len(bpe_tokenizer(more)["input_ids"]) > budget
        or fitted.context_tokens == fitted.original_context_tokens
    )


def test_fit_leaves_short_prompts_alone(bpe_tokenizer):
    fitted = JRTPrompt(repeat=2).fit(CONTEXT, QUESTION, bpe_tokenizer, 10_000)
    assert not fitted.truncated
    assert fitted.text == JRTPrompt(repeat=2).render(CONTEXT, QUESTION)


def test_fit_can_keep_the_end(bpe_tokenizer):
    context = "first part of the document. " * 5 + "The answer is at the end: Lyon."
    fitted = fit_prompt(JRTPrompt(repeat=2), context, QUESTION, bpe_tokenizer, 40, keep="end")
    assert context.endswith(fitted.context) and fitted.truncated


def test_budget_smaller_than_question(bpe_tokenizer):
    with pytest.raises(JRTError, match="smaller than the question"):
        JRTPrompt(repeat=2).fit(CONTEXT, QUESTION, bpe_tokenizer, 5)


def test_fit_on_byte_tokenizer(byte_tokenizer):
    fitted = JRTPrompt(repeat=2).fit("x" * 500, "q?", byte_tokenizer, 101)
    # 2 copies of n bytes + "q?\n" + "\n" + "\n" + "q?" = 2n + 7 <= 101
    assert fitted.context == "x" * 47 and fitted.prompt_tokens == 101
