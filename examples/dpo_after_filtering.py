"""Clean a dataset with ches, then train with TRL's DPOTrainer on what is left (a few steps, CPU is fine).

    pip install trl   # (in the test extras)
    python examples/dpo_after_filtering.py

The filtered dataset keeps exactly the input's columns, so it goes to DPOTrainer unchanged.
"""

from pathlib import Path

import ches

HERE = Path(__file__).resolve().parent
MODEL = str(HERE / "tiny-hh-model")


def main(steps: int = 4, output_dir: str = "/tmp/ches-dpo") -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    clean = ches.filter(str(HERE / "data" / "hh-sample.jsonl"), quantile=0.95, model=MODEL, keep_scores=False,
                        progress=False)
    print(f"training on {len(clean)} pairs, columns {clean.column_names}")
    model = AutoModelForCausalLM.from_pretrained(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    args = DPOConfig(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-4,
                     logging_steps=1, report_to="none", use_cpu=True, bf16=False, save_strategy="no")
    trainer = DPOTrainer(model=model, args=args, train_dataset=clean, processing_class=tokenizer)
    trainer.train()
    print("final loss", trainer.state.log_history[-1].get("train_loss"))


if __name__ == "__main__":
    main()
