"""Target tokens continue the prompt for every registered tokenizer family (issue 17, fidelity fix 1).

Tiny tokenizers of each family are trained here with the ``tokenizers`` library (no hub access):
byte-level BPE (GPT-2, GPT-J, Llama-3, Qwen2/3, SmolLM2), SentencePiece in HF's legacy Llama-2 form
(normalizer: prepend "▁", spaces to "▁") and SentencePiece as Metaspace pre-tokenizer (Mistral,
newer Llama-2 conversions). For each: prompt ids + continuation ids == ids of the joined string;
the legacy SentencePiece form's stand-alone encoding of " Paris" has the spurious leading "▁" that
the reference's ``tok(" " + target)`` gets; for the others it equals the continuation (byte-level
BPE: the reference's tokenization, unchanged).
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alphaedit.scoring import score_targets
from alphaedit.tokens import continuation_ids, encode

TEXT = [
    "The capital of France is Paris. The capital of Italy is Rome. Paris is in France.",
    "The mother tongue of Danielle Darrieux is French. Toko Yasuda plays the guitar.",
    "Berlin is the capital of Germany, and Madrid is the capital of Spain.",
    "Autonomous University of Madrid, which is located in Spain. The official language is English.",
] * 20
PAIRS = [
    ("The capital of France is", " Paris"),
    ("The capital of Italy is", " Rome"),
    ("The mother tongue of Danielle Darrieux is", " French"),
    ("Autonomous University of Madrid, which is located in", " Spain"),
    ("Toko Yasuda plays the", " guitar"),
    ("Madrid is the capital of", " Germany, and"),
]


def _byte_level() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|bos|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    return tok


def _sentencepiece_legacy() -> Tokenizer:
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Strip(" ", 1, 0)])
    # SentencePiece pieces never span a "▁" (split_by_whitespace): train with a splitting pre-tokenizer,
    # then run without one, as HF's legacy Llama-2 tokenizer.json does.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.pre_tokenizer = None
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def _sentencepiece_metaspace() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


FAMILIES = {"byte_level_bpe": _byte_level, "sentencepiece_legacy": _sentencepiece_legacy,
            "sentencepiece_metaspace": _sentencepiece_metaspace}


def _hf(tok: Tokenizer) -> PreTrainedTokenizerFast:
    sp = tok.token_to_id("<s>") is not None
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>" if sp else None,
                                   bos_token="<s>" if sp else "<|bos|>", eos_token="</s>" if sp else "<|bos|>")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> tuple[str, PreTrainedTokenizerFast]:
    return request.param, _hf(FAMILIES[request.param]())


def test_continuation_extends_the_prompt(family) -> None:
    name, tok = family
    prompts, targets = zip(*PAIRS, strict=True)
    cont = continuation_ids(tok, prompts, targets)
    joined = encode(tok, [p + t for p, t in PAIRS])
    for (p, t), c, j in zip(PAIRS, cont, joined, strict=True):
        assert encode(tok, [p])[0] + c == j, (name, p, t)
        assert tok.convert_ids_to_tokens(c)[0] not in ("▁", "Ġ"), (name, t, tok.convert_ids_to_tokens(c))


def test_standalone_encoding_differs_only_for_legacy_sentencepiece(family) -> None:
    name, tok = family
    prompts, targets = zip(*PAIRS, strict=True)
    cont = continuation_ids(tok, prompts, targets)
    alone = encode(tok, targets, add_special_tokens=False)
    if name != "sentencepiece_legacy":
        # byte-level BPE: the reference's tokenization, unchanged; Metaspace(prepend_scheme="first")
        # does not prepend a second "▁" to a text that starts with a space.
        assert cont == alone
    else:
        assert all(a[0] == tok.convert_tokens_to_ids("▁") and a[1:] == c for a, c in zip(alone, cont, strict=True)), (
            [tok.convert_ids_to_tokens(a) for a in alone])


def test_score_targets_reads_the_joined_string(family) -> None:
    """The teacher-forced NLL equals the one read off a plain forward of the joined string."""
    _, tok = family
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    prompts, targets = zip(*PAIRS, strict=True)
    got = score_targets(model, tok, list(prompts), list(targets)).nll
    for i, (p, t) in enumerate(PAIRS):
        head, full = encode(tok, [p])[0], encode(tok, [p + t])[0]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
        want = -torch.stack([logp[pos - 1, full[pos]] for pos in range(len(head), len(full))]).mean()
        assert abs(float(got[i]) - float(want)) < 1e-4, (p, t)


def test_merge_across_the_boundary_falls_back_to_standalone() -> None:
    tok = _hf(_byte_level())
    # "Par" + "is" merges into one word: the joined ids do not extend the prompt's, so the target is
    # tokenized on its own (the reference's behaviour).
    (cont,) = continuation_ids(tok, ["The capital of France is Par"], ["is"])
    assert cont == encode(tok, ["is"], add_special_tokens=False)[0]


def test_lengths_must_match() -> None:
    tok = _hf(_byte_level())
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        continuation_ids(tok, ["a", "b"], ["c"])


def test_zsre_reference_mode_puts_bos_before_the_answer() -> None:
    """The reference scores tok(" " + answer), which starts with BOS for a BOS-adding tokenizer: the
    answer's first "token" is BOS, which caps the accuracy; without a BOS both modes agree."""
    from eval.datasets import ZsreRecord
    from eval.rewrite import zsre_answer_prefix, zsre_token_accuracy_scores

    tok = _hf(_byte_level())  # adds <|bos|>
    assert zsre_answer_prefix(tok, "clean") == "" and zsre_answer_prefix(tok, "reference") == "<|bos|>"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    rec = ZsreRecord(case_id=0, subject="France", src="The capital of France is", rephrase="France's capital is",
                     answers=("Paris",), loc="The capital of Italy is", loc_ans="Rome")
    clean = zsre_token_accuracy_scores(model, tok, [rec])
    ref = zsre_token_accuracy_scores(model, tok, [rec], answer_tokens="reference")
    n_answer = len(continuation_ids(tok, [rec.src], [" Paris"])[0])
    # One more scored token (BOS, never the argmax of a random model's 1000-way output here).
    assert float(ref.efficacy[0]) <= n_answer / (n_answer + 1) and float(clean.efficacy[0]) >= 0.0
    plain = _hf(_sentencepiece_metaspace())
    plain._tokenizer.post_processor = None  # no BOS added: the modes agree
    assert zsre_answer_prefix(plain, "reference") == ""
    with pytest.raises(ValueError, match="'clean' or 'reference'"):
        zsre_answer_prefix(tok, "bos")
