"""String keys and physical constants shared across molconf.

Every key that names a batch field, a metric or a model output lives here, so a typo is an
``AttributeError`` at import time instead of a silent ``KeyError`` deep in a training loop.
"""

# --- batch fields (dense, padded; B molecules, N = largest molecule in the batch) ---------
ATOM_FEATURES = "atom_features"  # (B, N, 9) long, OGB-style categorical features
ATOMIC_NUMBERS = "atomic_numbers"  # (B, N) long, 0 for padding
POS = "pos"  # (B, N, 3) float, ground-truth coordinates in Å
MASK = "mask"  # (B, N) bool, True for real atoms
BOND_ADJ = "bond_adj"  # (B, N, N) bool, True where a covalent bond exists
LAP_PE = "lap_pe"  # (B, N, P) float, Laplacian eigenvectors (P = encoding width)
NUM_ATOMS = "num_atoms"  # (B,) long
MOL_INDEX = "mol_index"  # (B,) long, data set's own molecule id (QM9 "Index")
# specified stereo (molconf.data.features.StereoTuples), flat over the batch, first column the molecule
STEREO_CENTRES = "stereo_centres"  # (S, 6) long: molecule, centre, 4 neighbours by CIP rank (-1: none)
STEREO_CENTRE_SIGNS = "stereo_centre_signs"  # (S,) float: +1 R, -1 S
STEREO_BONDS = "stereo_bonds"  # (T, 5) long: molecule, a, b, c, d of a stereo double bond b=c
STEREO_BOND_SIGNS = "stereo_bond_signs"  # (T,) float: +1 Z, -1 E

# --- model outputs ----------------------------------------------------------------------
POS_PRED = "pos_pred"  # (B, N, 3) final prediction
POS_ENC = "pos_enc"  # (B, N, 3) intermediate (encoder / cache) conformation

# --- metric names -----------------------------------------------------------------------
D_MAE = "d_mae"
D_RMSE = "d_rmse"
C_RMSD = "c_rmsd"
STEREO_OK = "stereo_consistency"

# --- environment variables --------------------------------------------------------------
ENV_FORCE_REFERENCE_OPS = "MOLCONF_REFERENCE_OPS"  # "1": never use the compiled extension
ENV_CACHE_DIR = "MOLCONF_CACHE_DIR"  # where processed data sets are stored

# --- SDF properties of the GFN2-xTB ground-state data (molconf.ground_state.xtb writes them,
# molconf.data.moses_xtb reads them) -------------------------------------------------------
SDF_SOURCE_INDEX = "molconf_index"  # record position in the SMILES source = the molecule id
SDF_SMILES = "input_smiles"  # the SMILES the conformer was built from
SDF_ENERGY_EH = "gfn2_energy_Eh"  # GFN2-xTB total energy, Hartree
SDF_ENERGY_EV = "gfn2_energy_eV"  # the same in eV (what ASE reports)
SDF_CONVERGED = "gfn2_converged"  # 1 if the optimiser reached fmax
SDF_STEPS = "gfn2_steps"  # optimiser steps of the kept conformer
SDF_PROTOCOL = "xtb_protocol"  # short hash of the build protocol (spelled out in the build report)

# --- Lennard-Jones ------------------------------------------------------------------------
# Distances below this are clamped before evaluating LJ terms, so coincident atoms give a
# huge but finite repulsion (finite in float32 for every supported σ) instead of inf/NaN.
LJ_R_MIN = 1e-2
