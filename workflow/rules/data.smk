# Every value reaching a shell is quoted ({x:q}): config strings may hold spaces or ;.
# Dataset download (torchvision layout under data_dir) and per-class subsampling.


rule download:
    output:
        f"{RESULTS}/data/{{dataset}}.json",
    log:
        f"{RESULTS}/logs/download/{{dataset}}.log",
    conda:
        "../envs/hspec.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        data_dir=config["data_dir"],
        download="--download" if config["download"] else "",
        factory=lambda w: dataset_factory(w.dataset),
    shell:
        "hspec download --dataset {wildcards.dataset:q} --data-dir {params.data_dir:q} "
        "{params.download:q} {params.factory:q} --out {output:q} > {log:q} 2>&1"


rule subsample:
    input:
        f"{RESULTS}/data/{{dataset}}.json",
    output:
        f"{RESULTS}/subsets/{{dataset}}/n{{n}}.npy",
    log:
        f"{RESULTS}/logs/subsample/{{dataset}}-n{{n}}.log",
    conda:
        "../envs/hspec.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        data_dir=config["data_dir"],
        seed=config["seed"],
    shell:
        "hspec subsample --dataset {wildcards.dataset:q} --data-dir {params.data_dir:q} "
        "--per-class {wildcards.n:q} --seed {params.seed:q} --out {output:q} > {log:q} 2>&1"
