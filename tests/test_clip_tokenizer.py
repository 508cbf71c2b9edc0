import pytest

from anyto3d.encoders.clip_tokenizer import VOCAB_SIZE, byte_symbols, clip_tokenizer

PROMPTS = [
    "a DSLR photo of a red cube",
    "An astronaut riding a horse on Mars!!  123",
    "it's a café, naïve",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


def test_full_vocabulary_and_max_length(tok):
    assert len(tok) == VOCAB_SIZE == 49408
    assert tok.model_max_length == 77
    assert tok.bos_token_id == 49406 and tok.eos_token_id == 49407


def test_memoised(tok):
    assert clip_tokenizer() is tok
    assert clip_tokenizer(max_length=32) is not tok and clip_tokenizer(max_length=32).model_max_length == 32


def test_byte_symbols_are_a_bijection_of_visible_characters():
    symbols = byte_symbols()
    assert len(set(symbols)) == 256
    assert symbols[ord("a")] == "a" and symbols[ord(" ")] == chr(256 + 32)  # space is the 33rd unprintable byte
    assert all(s.isprintable() and not s.isspace() for s in symbols)


def test_ids_equal_open_clip_simple_tokenizer(tok):
    from open_clip.tokenizer import SimpleTokenizer

    ref = SimpleTokenizer()
    for prompt in PROMPTS:
        ours = tok(prompt).input_ids
        theirs = [ref.sot_token_id, *ref.encode(prompt), ref.eot_token_id]
        assert ours == theirs, prompt
        # padded batch form: identical on non-pad positions; HF pads with <|endoftext|>, open_clip with 0
        padded = tok([prompt], padding="max_length", max_length=77, truncation=True).input_ids[0]
        oc = ref([prompt])[0].tolist()
        n = len(theirs)
        assert len(padded) == 77 and padded[:n] == oc[:n]
        assert set(padded[n:]) <= {49407} and set(oc[n:]) <= {0}


def test_known_ids(tok):
    # "a" is a whole word: its id is the merged token "a</w>" = 320 in CLIP's vocabulary
    assert tok("a").input_ids == [49406, 320, 49407]


def test_long_prompts_truncate_to_77_ending_with_eos(tok):
    ids = tok(["red " * 200], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407
