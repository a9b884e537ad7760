# One papermill-parameterized notebook per figure. The notebook is an input, so editing it
# reruns only its figure; spectra are inputs, so a figure never recomputes them.
# `snakemake --report report.html` gathers the figures (PNG), each with its caption
# (hspec.figures.captions), and their numbers.json. Every shell value is quoted ({x:q}): config
# strings may hold spaces or ";". papermill's -p takes scalars only, hence -y with JSON.


rule figure:
    input:
        notebook=lambda w: NOTEBOOKS[w.fig],
        spectra=figure_inputs,
    output:
        notebook=f"{RESULTS}/figures/{{fig}}/{{fig}}.ipynb",
        html=f"{RESULTS}/figures/{{fig}}/{{fig}}.html",
        png=report(
            f"{RESULTS}/figures/{{fig}}/{{fig}}.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{fig}",
            labels={"figure": "{fig}", "file": "figure"},
        ),
        pdf=f"{RESULTS}/figures/{{fig}}/{{fig}}.pdf",
        numbers=report(
            f"{RESULTS}/figures/{{fig}}/numbers.json",
            caption="../report/numbers.rst",
            category="Figures",
            subcategory="{fig}",
            labels={"figure": "{fig}", "file": "numbers"},
        ),
    log:
        f"{RESULTS}/logs/figures/{{fig}}.log",
    conda:
        "../envs/hspec.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        parameters=figure_yaml,
        caption=figure_caption,
    shell:
        "papermill {input.notebook:q} {output.notebook:q} -y {params.parameters:q} "
        "> {log:q} 2>&1 "
        "&& jupyter nbconvert --to html {output.notebook:q} "
        '--output-dir "$(dirname {output.html:q})" --output "$(basename {output.html:q})" '
        ">> {log:q} 2>&1"
