"""The stages, each a short module with its model head and loss, all trained by
studylib.engine.train: `mae` (pre-pretraining), `wsp` (weakly-supervised pretraining), `init` (a
random encoder), and the transfer tasks `probe`, `finetune`, `lowshot`, `zeroshot`, `robustness`.
studylib.registry.STAGES declares the config sections that decide each one's result."""
