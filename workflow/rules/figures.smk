# One papermill-parameterized notebook per figure. The notebook is an input, so editing it
# reruns only its figure; spectra are inputs, so a figure never recomputes them.


rule figure:
    input:
        notebook=lambda w: NOTEBOOKS[w.fig],
        spectra=figure_inputs,
    output:
        notebook=f"{RESULTS}/figures/{{fig}}/{{fig}}.ipynb",
        html=f"{RESULTS}/figures/{{fig}}/{{fig}}.html",
        png=f"{RESULTS}/figures/{{fig}}/{{fig}}.png",
        pdf=f"{RESULTS}/figures/{{fig}}/{{fig}}.pdf",
        numbers=f"{RESULTS}/figures/{{fig}}/numbers.json",
    params:
        parameters=figure_yaml,
    conda:
        "../envs/hspec.yaml"
    log:
        f"{RESULTS}/logs/figures/{{fig}}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "papermill {input.notebook} {output.notebook} -y '{params.parameters}' > {log} 2>&1 "
        "&& jupyter nbconvert --to html {output.notebook} --output $(basename {output.html}) "
        ">> {log} 2>&1"
