//! Terminal narration for the `stageN demo` walkthroughs.
//!
//! Each demo is a short story: numbered steps, what the shop answered (and
//! which instance answered it), and why. Colour is used only when stdout is
//! a terminal, so a demo piped into a file or a test stays plain text.

use std::io::IsTerminal;

use crate::shopper::CartSeen;

/// Prints a demo's story.
#[derive(Debug)]
pub struct Narrator {
    colour: bool,
    step: usize,
}

impl Default for Narrator {
    fn default() -> Self {
        Self::new()
    }
}

impl Narrator {
    pub fn new() -> Self {
        Self {
            colour: std::io::stdout().is_terminal(),
            step: 0,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// The demo's heading.
    pub fn title(&self, text: &str) {
        println!("\n{}\n", self.paint("1", text));
    }

    /// A numbered step: what the shopper does next.
    pub fn step(&mut self, text: &str) {
        self.step += 1;
        println!(
            "{} {text}",
            self.paint("1;36", &format!("{:>2}.", self.step))
        );
    }

    /// What the shop answered, with the instance that answered.
    pub fn saw(&self, cart: &CartSeen) {
        println!(
            "    served by {}: cart {}",
            self.paint("1;33", cart.served_by()),
            self.paint("1", &cart.summary())
        );
    }

    /// A plain observation under a step.
    pub fn note(&self, text: &str) {
        println!("    {text}");
    }

    /// Why it happened: the lesson of the step.
    pub fn why(&self, text: &str) {
        println!("    {} {text}", self.paint("35", "why:"));
    }

    /// The closing moral.
    pub fn lesson(&self, text: &str) {
        println!("\n{} {text}\n", self.paint("1;32", "Lesson:"));
    }
}
