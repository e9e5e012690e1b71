"""Every random stream number of minivae, by name, in one place.

Two kinds of generators take a stream number next to the run's seed:

* **Philox streams** (``minivae.random`` on the CPU, ``minivae.gpu`` on the GPU): the ``stream``
  word of a draw's address (seed, offset, stream, element). Draws on different streams never
  share numbers, whatever their offsets, so sampling pictures or evaluating a model never reuses
  training noise, and the training data's shuffle and bits are drawn the same on both devices.
* **Data streams** (``minivae.data``, CPU only): the second entry of the
  ``np.random.SeedSequence([seed, stream, ...])`` that seeds each PCG64 generator of the fixed
  draws (the validation and test bits, the choice of labelled examples), so they are independent
  for one seed.

The values are those the recorded runs were made with; changing one changes their numbers.
"""

# ----- Philox streams (minivae.random.Generator / Noise) ------------------------------------------
#: The reparameterization noise of training (``Trainer.noise``).
TRAIN_NOISE = 0
#: Images sampled from a trained model (``minivae sample``, the sample grids of ``minivae.viz``).
SAMPLE_IMAGES = 3
#: The noise of ``evaluate.log_likelihood`` (importance-sampled log-likelihood).
EVAL_LOG_LIKELIHOOD = 7
#: The noise of ``evaluate.elbo`` (per-example ELBO terms).
EVAL_ELBO = 8
#: The one batch that ``minivae eval`` times to estimate how long the evaluation takes (its
#: numbers are thrown away).
EVAL_TIME_ESTIMATE = 9
#: The order of each training epoch (offset: the epoch; ``minivae.data.epoch_permutation``).
TRAIN_ORDER = 10
#: The Bernoulli draws that binarize each training epoch (offset: the epoch;
#: ``minivae.data.binarize``).
TRAIN_BITS = 11
#: The noise of the pass over the training images that sets the batch normalizations' statistics
#: (``Trainer`` with ``bn_statistics`` "pass"; offset 0 at every pass).
BATCH_NORM_PASS = 12

# ----- data streams (np.random.SeedSequence([seed, stream, ...])) -------------------------------
#: The one fixed Bernoulli draw of the validation set and of the test set
#: (``minivae.data.binarize_eval``). (1 was the training shuffle before it moved to Philox.)
DATA_BINARIZE = 2
#: The choice of the labelled subset of a semi-supervised run.
DATA_LABELLED = 3
#: The seed of the labelled minibatch loader of a semi-supervised run (its own shuffle and
#: binarization streams, apart from the unlabelled loader's).
LABELLED_LOADER = 4
