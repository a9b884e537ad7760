# Training with the paper's recipe (one job per initial learning rate, Table 1), then the
# choice of the best rate by test accuracy (Section 3.1).


rule train:
    input:
        unpack(train_inputs),
    output:
        model=f"{RESULTS}/runs/{{arch}}/{{dataset}}/n{{n}}/lr{{lr}}/model.pt",
        history=directory(f"{RESULTS}/runs/{{arch}}/{{dataset}}/n{{n}}/lr{{lr}}/history.zarr"),
    log:
        f"{RESULTS}/logs/train/{{arch}}-{{dataset}}-n{{n}}-lr{{lr}}.log",
    conda:
        "../envs/hspec.yaml"
    threads: config["training"]["threads"]
    resources:
        mem_mb=config["training"]["mem_mb"],
        runtime=config["training"]["runtime"],
        gpu=GPU,
    params:
        data_dir=config["data_dir"],
        indices=indices_option,
        epochs=lambda w: config["datasets"][w.dataset]["epochs"],
        seed=config["seed"],
        device=config["device"],
        batch_size=config["training"]["batch_size"],
        momentum=config["training"]["momentum"],
        weight_decay=config["training"]["weight_decay"],
        out=lambda w, output: os.path.dirname(output.model),
        own=train_options,
    shell:
        "hspec train --dataset {wildcards.dataset:q} --data-dir {params.data_dir:q} "
        "--arch {wildcards.arch:q} {params.indices:q} --lr {wildcards.lr:q} "
        "--epochs {params.epochs:q} --seed {params.seed:q} --batch-size {params.batch_size:q} "
        "--momentum {params.momentum:q} --weight-decay {params.weight_decay:q} "
        "--device {params.device:q} {params.own:q} --quiet --out {params.out:q} > {log:q} 2>&1"


rule select:
    input:
        lr_runs,
    output:
        model=f"{RESULTS}/models/{{arch}}/{{dataset}}/n{{n}}/model.pt",
        choice=f"{RESULTS}/models/{{arch}}/{{dataset}}/n{{n}}/selection.json",
    log:
        f"{RESULTS}/logs/select/{{arch}}-{{dataset}}-n{{n}}.log",
    conda:
        "../envs/hspec.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        runs=lambda w, input: [os.path.dirname(path) for path in input],
    shell:
        "hspec select {params.runs:q} --out {output.choice:q} --model-out {output.model:q} "
        "> {log:q} 2>&1"
