"""Plain-language explanations the app shows next to its views (Markdown), kept out of the layout
code so that they read as one text."""

METHOD = """\
**What MUCS does, in plain words.** To find which training images a generated image depends on, MUCS
copies the trained model and makes the copy *forget* the query image: it trains the copy to do badly on
the query (gradient ascent on its diffusion loss, bounded by **L_null**, the loss of an untrained model,
so the copy never does worse than knowing nothing), while the copy keeps fitting the training images.
Training images that the copy forgets *along with* the query are the ones the query depends on.

**The numbers.** For every training image the diffusion loss is measured before (**L_o**, original model)
and after unlearning (**L_u**, unlearned copy), on the *same* K noise levels and noise samples for both
models. The **score (skew)** is the normalised rise, averaged over the K levels:
`skew = mean over k of (L_u − L_o) / (L_u + L_o + 0.001)`. It lies between −1 and 1: near **1** the image
became as hard for the model as noise, near **0** forgetting the query did not touch it. The **top-k** are
the k images with the highest skew.

**What it is not.** A high score says the model's knowledge of that image is entangled with the query;
it is not a pixel similarity (compare *pixel NN* in *Methods side by side*). On a small class-conditional
model, unlearning one image often forgets its whole class, so same-class images all score high: the page
warns when that happens.

Method: Serrà, Goswami, Morreale, Liao, Mitsufuji, *Training data attribution for diffusion models by
mirrored unlearning and noise-consistent skew*, 2026 (arXiv:2605.17938)."""

RESULTS_EMPTY = """\
### No results yet
Make a query on **Query & attribute** (generate an image, upload one, or pick a training image) and
click **Attribute**; or open a stored run on **History & overlap** (example runs on the default model are
listed there). The most influential training images, the plots and the downloads appear here."""

PLOTS = """\
- **Skew histogram** (x: skew, y: number of training images, log scale): how the scores of all training
  images are spread. The dashed red line is the top-k cut-off; a gap before it means a confident top-k,
  a crowd at the right end means many images score alike.
- **L_o vs L_u** (x: mean loss before unlearning, y: mean loss after, both log; colour: skew): every dot is
  a training image. Dots high above the dotted diagonal became harder once the query was forgotten;
  the top-k are ringed in red. Hover a dot for its index and class.
- **Unlearning curve** (x: step, y: loss): the forget loss L_f on the query climbs towards L_null while the
  retain loss L_r on training images stays low; unlearning stops at the red line (1 − τ)·L_null or at the
  step cap (the summary says which).
- **Top-k classes** (x: class, y: images): the classes of the top-k (the query's class in red) against how
  many of each class a random pick would give (black marks)."""

WHY = """\
**Why this image?** Click an image of the top-k above (or type a training index and press *Explain*).
You get its loss at each of the K noise levels before (L_o) and after unlearning (L_u), where its skew
falls among all training images, its rank under MUCS and under the nearest-neighbour baselines, and
its nearest training images. A stored run keeps only the mean losses, and the per-noise L_u needs the
unlearned model: press *Replay unlearning* to recompute it (the run's own settings and seed; it takes
about as long as the run's unlearning stage, and the result is checked against the stored run). The
last two replayed models stay in memory."""

METHODS = """\
**Methods side by side**: the same query ranked by MUCS, by **D-TRAK** (Zheng et al., ICLR 2024: projected
gradients of the model's mean squared output, TRAK's kernel), by **AbU** (Wang et al., NeurIPS 2024: one
Fisher-preconditioned unlearning step, ranked by the loss increase), by **pixel NN** (the training images
nearest in pixel space), by **feature NN** (nearest in the diffusion model's own mid-block features) and
by the **MUCS + pixel NN** ensemble (the mean of the two rankings). Images that another method shares
with MUCS are framed green; the heatmap gives the overlap |A∩B| / min(|A|,|B|) of every pair of methods;
each row gives the method's seconds. The first D-TRAK call computes its training features once (minutes
on a CPU, then cached), AbU its Fisher; MUCS's scores are the run's own. D-TRAK projects to d = 4096 and
AbU averages 4,000 draws here (docs/methods-compared.md)."""

OVERLAP = """\
**Runs side by side and overlap.** Choose two or more runs and press *Compare runs*: each run's query and
top-k appear in one row, and images found in two or more runs are framed orange. The heatmap gives
|A∩B| / min(|A|,|B|) for every pair of runs (1 = the smaller set is inside the other); *Overlap vs random*
sets the pairs' overlaps against those of random top-k sets of the same sizes (if the runs' bars sit
right of the grey ones, the runs share images more than chance would); *recurring* lists the images
found in two or more of the chosen runs' top-k sets."""

HISTORY = """\
Every run of this and earlier sessions, newest first, then the example runs that ship with the app.
**K** is the number of noise levels, **lr ÷** the unlearning learning rate as a fraction of the
training one, **cap** the unlearning step cap; **settings** says *paper* when the run used the paper's
settings (K = 100, lr ÷ 10, ...), which take several times longer than the recommended ones."""
