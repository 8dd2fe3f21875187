"""nearness (what the ask-time gate routes by): a question's vector is the last hidden state
mean-pooled over its tokens, whichever way the model is asked for it."""
import pytest

from lorachat.scoring import nearness
from tests.helpers import model_dir

QUESTIONS = ["What is SOH?", "Who wrote Hamlet, and when was it first staged?", "Hi"]


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_embed_is_the_mean_pooled_last_hidden_state_with_or_without_the_vocabulary_projection(tmp_path, arch):
    """embed asks for the logits at one position only where the model takes logits_to_keep; the
    hidden states must be those of a plain forward pass, padding left out of the mean."""
    import torch

    from lorachat.models.loader import load_model

    loaded = load_model(str(model_dir(tmp_path, arch)), device="cpu", dtype="float32")   # bf16 rounds a padded batch otherwise
    model, tokenizer = loaded.model, loaded.tokenizer
    vectors = nearness.embed(model, tokenizer, QUESTIONS)
    for question, vector in zip(QUESTIONS, vectors):
        ids = torch.tensor([tokenizer(question)["input_ids"]])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].float()
        torch.testing.assert_close(vector, hidden.mean(0), rtol=1e-4, atol=1e-5)
