"""The named choices of an experiment's configuration and their defaults, known without importing JAX (the command
line lists them in its help): strategies, their default strengths and memories, sources, Fisher estimators, task
boundaries, trace modes. :mod:`~clloop_jax.workflow.settings` checks the configuration against them.
"""

#: Penalty strength per strategy in the default world (chosen on seed 0 of a shorter run; README, "Results").
DEFAULT_LAMBDA = {"none": 0.0, "l2": 0.3, "ewc": 3.0, "online_ewc": 3.0, "si": 30.0, "mas": 1.0, "ewc_budget": 3.0,
                  "l2_init": 0.01}


#: Penalty strength per strategy away from the world: chosen on split digits, class-incremental, for the labelled
#: benchmarks (experiments/scenarios.py); EWC's and online EWC's 1000 is also experiments/continual_rl.py's on gymnax.
#: The other strategies take 1.
DATA_LAMBDA = {"none": 0.0, "ewc": 1000.0, "online_ewc": 1000.0, "si": 100.0, "l2_init": 0.01}


#: The decay of the running importance (``gamma``) of online_ewc and ewc_budget when it is not given.
DEFAULT_GAMMA = 0.9


#: The built-in strategies by name: :func:`clloop_jax.strategies.registered` before anything else is registered,
#: known here without importing JAX. A strategy registered later (:func:`clloop_jax.strategies.register`) is accepted
#: as well.
STRATEGY_NAMES = ("none", "l2", "ewc", "online_ewc", "si", "mas", "ewc_budget", "replay", "agem", "lwf", "derpp",
                  "er_ace", "gem", "streaming_ewc", "streaming_si", "l2_init", "shrink_perturb", "continual_backprop",
                  "redo", "icarl", "gdumb")


#: The Fisher estimators, as :data:`clloop_jax.run.config.FISHER_VARIANTS`.
FISHER_VARIANTS = ("empirical", "sampled", "exact")


#: The labelled benchmarks whose data ships with the packages (:func:`clloop_jax.data.load_dataset`).
BUNDLED_DATASETS = ("mnist", "digits", "mnist1d")
#: The labelled benchmarks read from the standard files in ``--data-dir`` (:mod:`clloop_jax.data.files`): CIFAR's
#: python batches, the IDX files of the full MNIST, Fashion-MNIST and KMNIST, TinyImageNet's folder.
FILE_DATASETS = ("cifar10", "cifar100", "mnist_idx", "fashion_mnist", "kmnist", "tinyimagenet")
#: Where a run's tasks come from: the closed-loop world, a labelled benchmark, or a gymnax environment learned from
#: reward.
SOURCES = ("world",) + BUNDLED_DATASETS + FILE_DATASETS + ("gymnax",)
#: The classifiers of a labelled benchmark: an MLP, a convolutional backbone with batch norm
#: (:mod:`clloop_jax.backbones`), or the cross-modal recurrent model reading the input as a sequence of chunks.
BACKBONES = ("mlp", "convnet", "resnet18", "recurrent")

#: The values the recurrent backbone reads per step: a digit's 8-pixel rows, MNIST-1D's 40 values in 10 steps of 4,
#: an MNIST image's 28-pixel rows.
RECURRENT_CHUNK = {"digits": 8, "mnist1d": 4, "mnist": 28}


#: How the run meets its tasks: in sequence with known boundaries, or as one stream whose switches are hidden
#: (:mod:`clloop_jax.taskfree`: consolidations where a detector fires, at the true switches, or never).
BOUNDARY_MODES = ("known", "detect", "oracle", "none")

#: When the task of a stream with hidden switches changes (``taskfree.schedule``): every ``episodes_per_task``
#: episodes, at irregular random episodes (each seed its own), or blended linearly around each switch
#: (:mod:`clloop_jax.taskfree.schedules`).
TASKFREE_SCHEDULES = ("abrupt", "irregular", "gradual")

#: The strategies that keep a rehearsal memory, and its size (samples) when ``memory`` is not given.
MEMORY_STRATEGIES = ("replay", "agem", "derpp", "er_ace", "gem", "icarl", "gdumb")


#: What replay's and ER-ACE's memory keeps (``train.memory_policy``): a reservoir sample of the stream, or GDumb's
#: class-balanced greedy memory (:mod:`clloop_jax.strategies.memories`).
MEMORY_POLICIES = ("reservoir", "balanced")

#: The strategies whose memory takes a policy (``train.memory_policy``).
POLICY_STRATEGIES = ("replay", "er_ace")


DEFAULT_MEMORY = 500


#: What a run's traces keep, as :data:`clloop_jax.run.config.TRACE_MODES`.
TRACE_MODES = ("episodes", "tasks")

#: How the learning rate moves within a task (``train.lr_schedule``): held, or decayed linearly to 0
#: (:class:`clloop_jax.run.config.AdamLinearDecay`).
LR_SCHEDULES = ("constant", "linear")

#: ``gymnax.env_id`` of the library's own closed-loop world learned from its reward (``--source gymnax``).
WORLD_ID = "LatentWorld"
