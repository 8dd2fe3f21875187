"""Training a LoRA adapter: the loop (trainer), one optimizer step and the batch order (steps), what
a run is asked to do (recipe: TrainConfig and its defaults, the lr rule, planned steps, optimizer
and schedule), the adapter's shape (lora: targets and PEFT's LoraConfig), the divergence guard
(guard) and the processes of a run (ranks, through accelerate).

Imports core/, models/ and scoring/; never adapters/, lessons/, serving/ or chat/: the caller
creates, saves and activates the adapter and hands the loop encoded examples.
"""
