fn main() {
    println!("otturnaut");
}
