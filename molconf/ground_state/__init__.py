"""How molconf gets to a GFN2-xTB ground state: one folder, one entry point.

The pieces, in the order a molecule meets them:

:mod:`~molconf.ground_state.xtb`
    GFN2-xTB (tblite) for one molecule: single points, relaxation, and the data protocol
    (ETKDG → MMFF94 → GFN2-xTB of the lowest three) that made the moses_xtb references.
:mod:`~molconf.ground_state.build`
    That protocol over many SMILES: ``molconf build-xtb``, sharded, parallel, resumable.
:mod:`~molconf.ground_state.forces`
    GFN2-xTB and MMFF94 forces on perturbed geometries (``molconf gfn2-forces``), the training
    data of the correction.
:mod:`~molconf.ground_state.correction`
    The learned correction ΔE ≈ E(GFN2-xTB) − E(MMFF94) (:class:`Gfn2Correction`).
:mod:`~molconf.ground_state.prerelax`
    MMFF94 + ΔE minimised from an MMFF94 minimum: the cheap step ``relax_with="xtb"`` starts with.
:mod:`~molconf.ground_state.search`
    The search: candidate conformers from several sources, refined, ranked, the lowest kept
    (``molconf.predict(..., search=K)``).
:mod:`~molconf.ground_state.energies`
    GFN2-xTB energies of several conformers per molecule (``molconf conformer-energies``), the
    data a ranker is trained and measured on; :mod:`~molconf.ground_state.ranking` scores rankers.
:mod:`~molconf.ground_state.ensembles`
    GFN2-xTB conformer ensembles within 3 kcal/mol of the lowest minimum (``molconf
    conformer-ensembles``), the reference of the conformer-ensemble benchmark.

Nothing here is imported with :mod:`molconf`; tblite loads only when GFN2-xTB is asked for.
"""
