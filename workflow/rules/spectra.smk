# One spectrum per (model, split, component, variant), paper Section 3.2:
#   plain    NORMALIZATION -> LANCZOSAPPROXSPEC
#   deflated NORMALIZATION -> LOWRANKDEFLATION(C = number of classes) -> LANCZOSAPPROXSPEC
#   log      as plain with log_steps Lanczos steps, for the log-scale plots (Fig. 4b/4d)


rule spectrum:
    input:
        unpack(spectrum_inputs),
    output:
        directory(
            f"{RESULTS}/spectra/{{arch}}/{{dataset}}/n{{n}}/{{split}}-{{component}}-{{variant}}.zarr"
        ),
    params:
        data_dir=config["data_dir"],
        indices=spectrum_indices,
        deflate=lambda w: num_classes(w.dataset) if w.variant == "deflated" else 0,
        steps=lambda w: SPECTRUM["log_steps"] if w.variant == "log" else SPECTRUM["steps"],
        method=SPECTRUM["method"],
        bound_steps=SPECTRUM["bound_steps"],
        margin=SPECTRUM["margin"],
        points=SPECTRUM["points"],
        n_vec=SPECTRUM["n_vec"],
        iterations=SPECTRUM["iterations"],
        deflation=SPECTRUM["deflation"],
        k=SPECTRUM["k"],
        batch_size=SPECTRUM["batch_size"],
        precision=SPECTRUM["precision"],
        hvp=SPECTRUM["hvp"],
        resident="--resident" if SPECTRUM["resident"] else "",
        compile="--compile" if SPECTRUM["compile"] else "",
        device=config["device"],
        seed=config["seed"],
        checkpoint_interval=SPECTRUM["checkpoint_interval"],
    conda:
        "../envs/hspec.yaml"
    log:
        f"{RESULTS}/logs/spectrum/{{arch}}-{{dataset}}-n{{n}}-{{split}}-{{component}}-{{variant}}.log",
    threads: SPECTRUM["threads"]
    resources:
        mem_mb=SPECTRUM["mem_mb"],
        runtime=SPECTRUM["runtime"],
        gpu=GPU,
    shell:
        "hspec spectrum --model {input.model} --dataset {wildcards.dataset} "
        "--data-dir {params.data_dir} --split {wildcards.split} {params.indices} "
        "--n-per-class {wildcards.n} --component {wildcards.component} --method {params.method} "
        "--deflate {params.deflate} --steps {params.steps} "
        "--bound-steps {params.bound_steps} --margin {params.margin} "
        "--points {params.points} --n-vec {params.n_vec} "
        "--iterations {params.iterations} --deflation {params.deflation} --k {params.k} "
        "--batch-size {params.batch_size} --precision {params.precision} "
        "--hvp {params.hvp} {params.resident} {params.compile} "
        "--device {params.device} --seed {params.seed} "
        "--checkpoint-interval {params.checkpoint_interval} --quiet --out {output} > {log} 2>&1"
