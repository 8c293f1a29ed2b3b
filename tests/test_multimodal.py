import pytest
import torch

from conftest import fixture_path
from imuspec import Decoder, LlamaConfig, Tokenizer
from imuspec.multimodal import PLACEHOLDER_ID, splice, tokenize_with_placeholder


def test_placeholder_tokenization_and_splicing():
    tok = Tokenizer(fixture_path("llama2_tokenizer", "tokenizer.model").parent)
    ids = tokenize_with_placeholder(tok, "USER: <image>\nThe person is walking.", "<image>")
    k = ids.index(PLACEHOLDER_ID)
    assert ids[0] == 1 and ids[1:k] == tok.encode("USER: ", bos=False)
    assert ids[k + 1:] == tok.encode("\nThe person is walking.", bos=False)
    torch.manual_seed(0)
    dec = Decoder(LlamaConfig(vocab_size=32000, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                              num_attention_heads=2))
    feats = torch.randn(3, 8)
    emb = splice(dec, ids, [feats])
    assert emb.shape == (len(ids) - 1 + 3, 8)
    assert torch.equal(emb[k:k + 3], feats)
    assert torch.equal(emb[:k], dec.embed(torch.tensor(ids[:k])))
    assert torch.equal(emb[k + 3:], dec.embed(torch.tensor(ids[k + 1:])))
    with pytest.raises(ValueError, match="1 modality placeholders but 2"):
        splice(dec, ids, [feats, feats])
    with pytest.raises(ValueError, match=r"expected \[N, 8\]"):
        splice(dec, ids, [torch.randn(3, 9)])
