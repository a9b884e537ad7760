# One spectrum per (model, split, component, variant), paper Section 3.2:
#   plain    NORMALIZATION -> LANCZOSAPPROXSPEC
#   deflated NORMALIZATION -> LOWRANKDEFLATION(C = number of classes) -> LANCZOSAPPROXSPEC
#   log      as plain with log_steps Lanczos steps, for the log-scale plots (Fig. 4b/4d)
# The settings reach `hspec spectrum` as one JSON file per variant, an input (see
# write_spectrum_settings). `snakemake spectra`: the eq. 11 grid for every selected model.


rule spectrum:
    input:
        unpack(spectrum_inputs),
    output:
        directory(
            f"{RESULTS}/spectra/{{arch}}/{{dataset}}/n{{n}}/{{split}}-{{component}}-{{variant}}.zarr"
        ),
    log:
        f"{RESULTS}/logs/spectrum/{{arch}}-{{dataset}}-n{{n}}-{{split}}-{{component}}-{{variant}}.log",
    conda:
        "../envs/hspec.yaml"
    threads: SPECTRUM["threads"]
    resources:
        mem_mb=SPECTRUM["mem_mb"],
        runtime=SPECTRUM["runtime"],
        gpu=GPU,
    params:
        data_dir=config["data_dir"],
        indices=spectrum_indices,
        deflate=deflation,
        factory=lambda w: dataset_factory(w.dataset),
    shell:
        "hspec spectrum --settings {input.settings:q} --model {input.model:q} "
        "--dataset {wildcards.dataset:q} --data-dir {params.data_dir:q} {params.factory:q} "
        "--split {wildcards.split:q} {params.indices:q} --n-per-class {wildcards.n:q} "
        "--component {wildcards.component:q} --deflate {params.deflate:q} "
        "--quiet --out {output:q} > {log:q} 2>&1"


# Per-block spectra (`blocks:`, figure fig7): one job per model, writing one group with a
# subgroup per block (per layer, or the named blocks of blocks.params), plain settings.
rule block_spectra:
    input:
        unpack(lambda w: spectrum_inputs(w, "plain")),
    output:
        directory(
            f"{RESULTS}/spectra/{{arch}}/{{dataset}}/n{{n}}/{{split}}-{{component}}-blocks.zarr"
        ),
    log:
        f"{RESULTS}/logs/spectrum/{{arch}}-{{dataset}}-n{{n}}-{{split}}-{{component}}-blocks.log",
    conda:
        "../envs/hspec.yaml"
    threads: SPECTRUM["threads"]
    resources:
        mem_mb=SPECTRUM["mem_mb"],
        runtime=SPECTRUM["runtime"],
        gpu=GPU,
    params:
        data_dir=config["data_dir"],
        indices=spectrum_indices,
        factory=lambda w: dataset_factory(w.dataset),
        blocks=block_options,
    shell:
        "hspec spectrum --settings {input.settings:q} --model {input.model:q} "
        "--dataset {wildcards.dataset:q} --data-dir {params.data_dir:q} {params.factory:q} "
        "--split {wildcards.split:q} {params.indices:q} --n-per-class {wildcards.n:q} "
        "--component {wildcards.component:q} {params.blocks:q} "
        "--quiet --out {output:q} > {log:q} 2>&1"


rule spectra:
    input:
        all_spectra(),
